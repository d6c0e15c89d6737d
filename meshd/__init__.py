"""meshd: a peer-to-peer compute mesh with no central coordinator."""

__version__ = "0.1.0"
