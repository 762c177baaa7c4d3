"""Providers found by name through the entry-point group ``secure_kv.key_providers``.

As ``keyring`` finds its backends, secure_kv finds master-key providers through package
metadata, so a third party's provider is chosen by ``SECURE_KV_KEY_PROVIDER=<name>`` the
same way as a built-in one. A distribution registers one in its ``pyproject.toml``::

    [project.entry-points."secure_kv.key_providers"]
    my-vault = "my_package.vault:VaultMasterKey"

The object named is either a :class:`~secure_kv.keys.MasterKeyProvider` subclass with a
``from_settings(settings, *, create=False)`` classmethod, or any callable taking the same
arguments and returning a provider.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from secure_kv.errors import ConfigurationError, MasterKeyError, SecureKVError
from secure_kv.keys.base import MasterKey, MasterKeyProvider, RawMasterKey, parse_master_key
from secure_kv.settings import Settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "WithPreviousKeys",
    "available_providers",
    "load_provider",
    "provider_from_settings",
]

log = logging.getLogger("secure_kv.keys")

ENTRY_POINT_GROUP = "secure_kv.key_providers"

# Used only when secure_kv runs without its package metadata (copied into a tree, zipped):
# the same names pyproject.toml declares.
_BUILT_IN = {
    "env": "secure_kv.keys.env:EnvMasterKey",
    "file": "secure_kv.keys.file:FileMasterKey",
    "keyring": "secure_kv.keys.keyring:KeyringMasterKey",
    "pkcs11": "secure_kv.keys.pkcs11:Pkcs11MasterKey",
    "aws-kms": "secure_kv.keys.aws_kms:AwsKmsMasterKey",
}


def available_providers() -> dict[str, EntryPoint]:
    """Every registered provider by name. A built-in name cannot be taken over by another
    distribution: its entry point is ignored with a warning."""
    found = {name: EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in _BUILT_IN.items()}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        name = point.name.strip().lower()
        if name in _BUILT_IN:
            if point.value != _BUILT_IN[name]:
                log.warning(
                    "ignoring the key provider entry point %r -> %s: %r is a built-in provider",
                    name,
                    point.value,
                    name,
                )
            continue
        found[name] = point
    return found


def load_provider(name: str, settings: Settings, *, create: bool = False) -> MasterKeyProvider:
    """Make the provider registered as ``name``, configured from ``settings``."""
    providers = available_providers()
    point = providers.get(name.strip().lower())
    if point is None:
        raise ConfigurationError(
            f"unknown key provider {name!r}: choose one of {', '.join(sorted(providers))}, or install "
            f"the package that registers it (entry-point group {ENTRY_POINT_GROUP})"
        )
    try:
        factory: Any = point.load()
    except ImportError as error:
        raise ConfigurationError(
            f"the key provider {point.name!r} cannot be imported ({type(error).__name__}: {error})"
        ) from None
    make = getattr(factory, "from_settings", factory)
    if not callable(make):
        raise ConfigurationError(
            f"the key provider entry point {point.name!r} ({point.value}) is not callable"
        )
    provider = make(settings, create=create)
    if not isinstance(provider, MasterKeyProvider):
        raise ConfigurationError(
            f"the key provider {point.name!r} ({point.value}) returned {type(provider).__name__}, "
            "not a secure_kv.keys.MasterKeyProvider"
        )
    return provider


class WithPreviousKeys(MasterKeyProvider):
    """A provider plus more keys accepted for reading: raw keys
    (``SECURE_KV_PREVIOUS_MASTER_KEYS``) and a whole other provider
    (``SECURE_KV_PREVIOUS_KEY_PROVIDER``), so a store moves between providers online.

    The other provider is made on first need, so a store whose data keys are all under
    the current key keeps working when the old key service is gone.
    """

    def __init__(
        self,
        primary: MasterKeyProvider,
        raw: Sequence[RawMasterKey] = (),
        previous_provider: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        #: The provider that writes; key management (``--generate``) acts on it.
        self.primary = primary
        self._raw = tuple(raw)
        self._previous_name = previous_provider
        self._settings = settings
        self._previous: MasterKeyProvider | None = None

    def _previous_provider(self) -> MasterKeyProvider | None:
        if self._previous is None and self._previous_name is not None:
            assert self._settings is not None
            try:
                self._previous = load_provider(self._previous_name, self._settings)
            except SecureKVError as error:
                raise MasterKeyError(
                    f"the previous key provider {self._previous_name!r} "
                    f"(SECURE_KV_PREVIOUS_KEY_PROVIDER) is unavailable: {error}"
                ) from None
        return self._previous

    def current_key(self) -> MasterKey:
        return self.primary.current_key()

    def previous_keys(self) -> Sequence[MasterKey]:
        keys: list[MasterKey] = [*self.primary.previous_keys(), *self._raw]
        other = self._previous_provider()
        if other is not None:
            keys.extend(other.all_keys())
        return tuple(keys)

    def find(self, kek_id: str) -> MasterKey | None:
        found = self.primary.find(kek_id)
        if found is not None:
            return found
        for key in self._raw:
            if key.kek_id == kek_id:
                return key
        other = self._previous_provider()
        return other.find(kek_id) if other is not None else None


def provider_from_settings(settings: Settings, *, create: bool = False) -> MasterKeyProvider:
    """The provider ``SECURE_KV_KEY_PROVIDER`` names, configured from the same settings,
    with ``SECURE_KV_PREVIOUS_MASTER_KEYS`` and ``SECURE_KV_PREVIOUS_KEY_PROVIDER`` added
    for reading."""
    primary = load_provider(settings.key_provider, settings, create=create)
    raw: list[RawMasterKey] = []
    # The env provider reads SECURE_KV_PREVIOUS_MASTER_KEYS itself.
    if settings.previous_master_keys is not None and settings.key_provider != "env":
        text = settings.previous_master_keys.get_secret_value()
        for position, part in enumerate(item for item in text.split(",") if item.strip()):
            raw.append(parse_master_key(part, f"SECURE_KV_PREVIOUS_MASTER_KEYS entry {position + 1}"))
    previous = settings.previous_key_provider
    if previous == settings.key_provider:
        previous = None
    if not raw and previous is None:
        return primary
    return WithPreviousKeys(primary, raw, previous, settings)
