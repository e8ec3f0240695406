"""felix-py: a per-host agent that makes every Linux host an L3 router for its containers."""

__version__ = "0.1.0"
