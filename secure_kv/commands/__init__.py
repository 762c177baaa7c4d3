"""Typed functions behind every ``secure-kv`` command, returning report objects: the CLI is a
thin layer over them, and everything it does is scriptable from Python (alembic's command.py).

Each name is imported from its module on first use, so ``secure-kv keygen`` and ``--help``
start without loading the store (as ``secure_kv`` itself does for ``SecureStore``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secure_kv.commands.audit import audit_anchor, audit_log, audit_prune, audit_report, audit_verify
    from secure_kv.commands.keys import KeyCreated, create_provider_key, keygen
    from secure_kv.commands.store import (
        DEMO_VALUES,
        DemoReport,
        InitReport,
        StoredValue,
        delete_value,
        demo,
        get_value,
        init,
        list_keys,
        purge,
        rotate_master,
        rotate_workspaces,
        set_value,
        shred,
        status,
    )

__all__ = [
    "DEMO_VALUES",
    "DemoReport",
    "InitReport",
    "KeyCreated",
    "StoredValue",
    "audit_anchor",
    "audit_log",
    "audit_prune",
    "audit_report",
    "audit_verify",
    "create_provider_key",
    "delete_value",
    "demo",
    "get_value",
    "init",
    "keygen",
    "list_keys",
    "purge",
    "rotate_master",
    "rotate_workspaces",
    "set_value",
    "shred",
    "status",
]

_MODULES = {
    "audit": ("audit_anchor", "audit_log", "audit_prune", "audit_report", "audit_verify"),
    "keys": ("KeyCreated", "create_provider_key", "keygen"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'secure_kv.commands' has no attribute {name!r}")
    value = getattr(import_module(f"secure_kv.commands.{_HOME.get(name, 'store')}"), name)
    globals()[name] = value  # once: later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
