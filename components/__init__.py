"""One Kubeflow component per pipeline step.

Each is a lightweight component whose base_image is the project's own image and whose
body only imports and calls a step function of the installed `kubeloop` package: KFP
pastes just the function's source into the container, so nothing else from this
folder would exist there at run time (kubeflow/pipelines#8792)."""
