"""Attacks, one module per attacker capability of SECURITY.md's threat model."""
