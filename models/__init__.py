"""Model code of kubeloop: the model kinds (one module each, registered as an entry point
in pyproject.toml: logistic, lightgbm_trainer, torch_config + torch_trainer) and the
model servers.

Nothing is imported here, so that importing one submodule (a LightGBM predictor, say)
never pulls in another's heavy library (torch)."""
