"""Tessera SDK: client and resource-server helpers (imports nothing from the server)."""
