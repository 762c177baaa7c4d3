"""Master-key providers.

Every provider implements :class:`MasterKeyProvider`: one current key for wrapping new
data keys, and previous keys still accepted for unwrapping. A key kept in a service (an
HSM, a KMS) implements :class:`MasterKey` by calling that service, so its material never
enters this process. Providers are found by name through the entry-point group
``secure_kv.key_providers`` (see :mod:`secure_kv.keys.registry` and docs/key-management.md),
and ``secure_kv.testing.providers`` holds the contract tests a new one proves itself with.

``Pkcs11MasterKey`` (extra ``hsm``) and ``AwsKmsMasterKey`` (extra ``aws``) are imported on
first use, so the base install needs neither python-pkcs11 nor boto3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secure_kv.keys.base import (
    MasterKey,
    MasterKeyProvider,
    RawKeyProvider,
    RawMasterKey,
    ReloadingProvider,
    generate_master_key,
)
from secure_kv.keys.env import EnvMasterKey
from secure_kv.keys.file import FileMasterKey
from secure_kv.keys.keyring import KeyringMasterKey
from secure_kv.keys.registry import (
    ENTRY_POINT_GROUP,
    WithPreviousKeys,
    available_providers,
    load_provider,
    provider_from_settings,
)
from secure_kv.keys.static import StaticMasterKey

if TYPE_CHECKING:
    from secure_kv.keys.aws_kms import AwsKmsMasterKey
    from secure_kv.keys.pkcs11 import Pkcs11MasterKey

__all__ = [
    "ENTRY_POINT_GROUP",
    "AwsKmsMasterKey",
    "EnvMasterKey",
    "FileMasterKey",
    "KeyringMasterKey",
    "MasterKey",
    "MasterKeyProvider",
    "Pkcs11MasterKey",
    "RawKeyProvider",
    "RawMasterKey",
    "ReloadingProvider",
    "StaticMasterKey",
    "WithPreviousKeys",
    "available_providers",
    "generate_master_key",
    "load_provider",
    "provider_from_settings",
]


def __getattr__(name: str) -> Any:
    if name == "Pkcs11MasterKey":
        from secure_kv.keys.pkcs11 import Pkcs11MasterKey

        return Pkcs11MasterKey
    if name == "AwsKmsMasterKey":
        from secure_kv.keys.aws_kms import AwsKmsMasterKey

        return AwsKmsMasterKey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
