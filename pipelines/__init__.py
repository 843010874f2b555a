"""Pipeline definitions that wire the components. Compiled IR YAML is an output
(`kubeloop pipeline compile`), never a source."""
