"""Alembic migrations for the secure_kv schema (run them with ``secure-kv init``)."""
