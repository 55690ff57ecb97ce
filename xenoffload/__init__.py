"""xenoffload: negotiated, configurable checksum offload for Xen paravirtual network devices."""

__version__ = "0.1.0"
