"""The image every component runs in (built from images/components.Dockerfile and
loaded into kind with `kind load docker-image`). The tag follows the package version."""

from kubeloop import __version__

COMPONENT_IMAGE = f"kubeloop/components-python:{__version__}"

# The image already has kfp installed (it is in the lock file), so no pip step runs
# inside the container or under kfp.local.
COMPONENT_OPTIONS = {"base_image": COMPONENT_IMAGE, "install_kfp_package": False}
