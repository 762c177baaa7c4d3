"""The workspace's own master key, from the provider's ``secret-input`` credential."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from secure_kv.errors import MasterKeyError
from secure_kv.keys import StaticMasterKey

CREDENTIAL = "secure_kv_master_key"


def tenant_master_key(credentials: dict[str, Any]) -> StaticMasterKey:
    """A ``StaticMasterKey`` of the 32 bytes a `secure-kv keygen` line encodes.

    Each Dify workspace fills in its own, so it binds that workspace's entries by itself:
    ``EncryptedStorage(storage, master_key=tenant_master_key(...))`` needs no
    ``tenant_secret`` (docs/dify.md, "each tenant's own master key"). The credential's
    text never appears in an error.
    """
    text = "".join(str(credentials.get(CREDENTIAL) or "").split())
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise MasterKeyError(
            f"the {CREDENTIAL} credential is not a master key: paste one line of `secure-kv keygen` "
            "output (url-safe base64 of 32 bytes)"
        )
    return StaticMasterKey(raw)
