"""Tessera: identity and access control plane for AI systems."""

__version__ = "0.1.0"
