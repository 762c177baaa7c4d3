"""The store: SecureStore and Workspace (the four calls), their batches, the data-key cache
and the write policy (expiry, the cache default, the credential policy)."""

from secure_kv.store.secure_store import SecureStore
from secure_kv.store.workspace import Workspace

__all__ = ["SecureStore", "Workspace"]
