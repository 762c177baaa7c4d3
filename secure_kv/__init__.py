"""secure_kv: an encrypted, secrets-aware key-value store with Dify's storage interface.

>>> from secure_kv import SecureStore, Category
>>> store = SecureStore.open("sqlite:///store.db", master_key=provider)  # doctest: +SKIP
>>> store.workspace("tenant-42:my-plugin").set("openai", b"sk-...", category=Category.TOKEN)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secure_kv.categories import Category

if TYPE_CHECKING:
    from secure_kv.store import SecureStore, Workspace

__all__ = ["Category", "SecureStore", "Workspace", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``SecureStore`` and ``Workspace`` are imported on first use, so that the
    ``secure-kv`` command starts without SQLAlchemy when it does not need it (``--help``).
    """
    if name in ("SecureStore", "Workspace"):
        from secure_kv import store

        return getattr(store, name)
    raise AttributeError(f"module 'secure_kv' has no attribute {name!r}")
