"""The image every component runs in (built from images/components.Dockerfile and
loaded into kind with `kind load docker-image`). The tag follows the package version."""

from kubeloop import __version__

# Every project image is named under kind.local/, the registry name that Knative never
# resolves to a digest (its registries-skipping-tag-resolving default) and that kind serves
# from the images `kind load docker-image` put on the node. One rule for all four images.
COMPONENT_IMAGE = f"kind.local/kubeloop/components-python:{__version__}"

# The image already has kfp installed (it is in the lock file), so no pip step runs
# inside the container or under kfp.local.
COMPONENT_OPTIONS = {"base_image": COMPONENT_IMAGE, "install_kfp_package": False}
