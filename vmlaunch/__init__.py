"""vmlaunch: run HPC container images inside curated lightweight VMs."""

__version__ = "0.1.0"
