"""kubeloop: the life of a production model as two loops (offline Kubeflow, online KServe)."""

__version__ = "0.1.0"
