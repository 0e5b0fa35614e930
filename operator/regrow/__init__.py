"""regrow: a Kubernetes operator that trains, serves, watches for drift and retrains ML models."""

GROUP = "regrow.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = ["API_VERSION", "GROUP", "VERSION"]
