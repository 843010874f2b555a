"""The Kubernetes side: patching InferenceServices (canary verbs), reading their traffic
status and drift-alert Events, used by `kubeloop canary --context` and `kubectl kubeloop`."""
