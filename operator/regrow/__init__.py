"""regrow: a Kubernetes operator that trains, serves, watches for drift and retrains ML models."""

from importlib.metadata import version

__version__ = version("regrow")

GROUP = "regrow.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = ["API_VERSION", "GROUP", "VERSION", "__version__"]
