"""secure_kv: an encrypted, secrets-aware key-value store with Dify's storage interface.

>>> from secure_kv import SecureStore, Category
>>> store = SecureStore.open("sqlite:///store.db", master_key=provider)  # doctest: +SKIP
>>> store.workspace("tenant-42:my-plugin").set("openai", b"sk-...", category=Category.TOKEN)  # doctest: +SKIP
"""

from __future__ import annotations

from .categories import Category
from .store import SecureStore, Workspace

__all__ = ["Category", "SecureStore", "Workspace", "__version__"]

__version__ = "0.1.0"
