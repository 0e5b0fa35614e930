"""Pure builders: a parsed spec and its owner in, a Kubernetes manifest (a dict) out."""
