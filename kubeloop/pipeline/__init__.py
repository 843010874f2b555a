"""Compiling, running (kfp.local) and submitting (kfp.Client) the training pipeline,
plus the step functions each Kubeflow component calls."""
