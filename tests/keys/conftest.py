"""Fixtures for the real key services (see services.py)."""

from .services import kms, moto_server, own_moto_server, secret_service, secret_service_session, softhsm

__all__ = ["kms", "moto_server", "own_moto_server", "secret_service", "secret_service_session", "softhsm"]
