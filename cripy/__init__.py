"""cripy: a Kubernetes container runtime (CRI v1) on conmon + runc, written in Python."""

__version__ = "0.1.0"
RUNTIME_NAME = "cripy"
CRI_API_VERSION = "v1"
