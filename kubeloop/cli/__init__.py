"""The `kubeloop` command. Each sub-command group lives in its own module and is a thin
layer over functions of the core library."""
