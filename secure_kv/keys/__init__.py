"""Master-key providers.

Every provider implements :class:`MasterKeyProvider`: one current key for wrapping new
data keys, and previous keys still accepted for unwrapping. KMS and HSM providers plug in
by implementing the same two classes (see ``base.py``).
"""

from __future__ import annotations

from ..env_keys import environment_keys, take_from_environment
from ..errors import ConfigurationError
from ..settings import KeyProviderName, Settings
from .base import MasterKey, MasterKeyProvider, generate_master_key
from .env import EnvMasterKey
from .file import FileMasterKey
from .keyring import KeyringMasterKey
from .static import StaticMasterKey

__all__ = [
    "EnvMasterKey",
    "FileMasterKey",
    "KeyringMasterKey",
    "MasterKey",
    "MasterKeyProvider",
    "StaticMasterKey",
    "generate_master_key",
    "provider_from_settings",
]


def provider_from_settings(settings: Settings, *, create: bool = False) -> MasterKeyProvider:
    """The provider ``SECURE_KV_KEY_PROVIDER`` names, configured from the same settings."""
    if settings.key_provider is KeyProviderName.ENV:
        environ = {}
        if settings.master_key is not None:
            environ["SECURE_KV_MASTER_KEY"] = settings.master_key.get_secret_value()
        if settings.previous_master_keys is not None:
            environ["SECURE_KV_PREVIOUS_MASTER_KEYS"] = settings.previous_master_keys.get_secret_value()
        if "SECURE_KV_MASTER_KEY" not in environ:  # taken out of os.environ by an earlier open
            environ = {**environment_keys(), **environ}
        provider = EnvMasterKey(environ)
        take_from_environment(environ)  # child processes must not inherit the key
        return provider
    if settings.key_provider is KeyProviderName.FILE:
        if settings.master_key_file is None:
            raise ConfigurationError("SECURE_KV_KEY_PROVIDER=file needs SECURE_KV_MASTER_KEY_FILE (a path)")
        return FileMasterKey(settings.master_key_file)
    return KeyringMasterKey(create=create)
