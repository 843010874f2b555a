"""Model code of kubeloop: the LightGBM and PyTorch trainers and the model servers.

Nothing is imported here, so that importing one submodule (a LightGBM predictor, say)
never pulls in another's heavy library (torch)."""
