"""Tessera SDK: helpers for agents and resource servers (imports nothing from the server)."""
