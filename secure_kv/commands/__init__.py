"""Typed functions behind every ``secure-kv`` command, returning report objects: the CLI is a
thin layer over them, and everything it does is scriptable from Python (alembic's command.py).
"""

from secure_kv.commands.audit import audit_anchor, audit_log, audit_prune, audit_report, audit_verify
from secure_kv.commands.store import (
    DEMO_VALUES,
    DemoReport,
    InitReport,
    KeyCreated,
    StoredValue,
    create_provider_key,
    delete_value,
    demo,
    get_value,
    init,
    keygen,
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
