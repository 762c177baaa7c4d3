"""Adapters to the hosts secure_kv plugs into: Dify's plugin storage (dify.py)."""
