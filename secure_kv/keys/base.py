"""The master-key protocol every provider implements.

A provider hands out one *current* master key (used to wrap new data keys) and any
*previous* keys (still accepted to unwrap, while a rotation is under way). A master key is
an object that wraps and unwraps small secrets, so a KMS or HSM provider can keep the key
material out of this process entirely: it implements :class:`MasterKey` by calling its
service, and :class:`MasterKeyProvider` by returning such objects.

Key objects never show their bytes (``repr`` gives the public ``kek_id`` fingerprint) and
refuse to be pickled, so they do not leak into logs, tracebacks or caches by accident.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from secure_kv.errors import AuthenticationError, ConfigurationError, MasterKeyError, UnsupportedVersionError

if TYPE_CHECKING:
    from secure_kv.settings import Settings

__all__ = [
    "MASTER_KEY_BYTES",
    "MasterKey",
    "MasterKeyProvider",
    "RawMasterKey",
    "format_master_key",
    "generate_master_key",
    "parse_master_key",
]

MASTER_KEY_BYTES = 32
_WRAP_FORMAT = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16


class _Unpicklable:
    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        self.__copy__()


class MasterKey(_Unpicklable, ABC):
    """One key-encryption key (KEK).

    ``kek_id`` is a public fingerprint: safe to store and print, and the same for the same
    key everywhere, so the store can tell "wrong master key" apart from "tampered data".
    """

    @property
    @abstractmethod
    def kek_id(self) -> str:
        """A short public fingerprint of this key (16 hex digits for local keys)."""

    @abstractmethod
    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` (a data key), bound to ``associated_data``."""

    @abstractmethod
    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        """Reverse :meth:`wrap`; raise :class:`AuthenticationError` if anything differs."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kek_id={self.kek_id}>"


class RawMasterKey(MasterKey):
    """A 256-bit master key held in this process's memory.

    Two subkeys are derived with HKDF-Expand-SHA256 (the key is already uniformly random, so
    no extract step is needed): a wrapping key for AES-256-GCM and the ``kek_id``
    fingerprint. Neither reveals the master key.
    """

    __slots__ = ("_aead", "_kek_id")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise MasterKeyError(f"a master key is {MASTER_KEY_BYTES} raw bytes, not {type(key).__name__}")
        if len(key) != MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"a master key is exactly {MASTER_KEY_BYTES} bytes (256 bits), not {len(key)}"
            )
        key = bytes(key)
        self._kek_id = _hkdf_expand(key, b"secure_kv/v1/kek-id", 8).hex()
        self._aead = AESGCM(_hkdf_expand(key, b"secure_kv/v1/kek-wrap", 32))

    @property
    def kek_id(self) -> str:
        return self._kek_id

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        # Random 96-bit nonces are safe here: a master key wraps one data key per workspace
        # and rotation, many orders of magnitude below the 2^32 messages NIST allows per key.
        nonce = os.urandom(_NONCE_BYTES)
        return bytes([_WRAP_FORMAT]) + nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        if wrapped and wrapped[0] > _WRAP_FORMAT:
            raise UnsupportedVersionError(
                f"wrapped key has format {wrapped[0]}, newer than this secure_kv reads "
                f"({_WRAP_FORMAT}): upgrade secure_kv"
            )
        if len(wrapped) < 1 + _NONCE_BYTES + _TAG_BYTES or wrapped[0] != _WRAP_FORMAT:
            raise AuthenticationError("wrapped key is malformed")
        nonce = wrapped[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, wrapped[1 + _NONCE_BYTES :], associated_data)
        except InvalidTag:
            raise AuthenticationError("wrapped key failed authentication") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawMasterKey):
            return NotImplemented
        return hmac.compare_digest(self._kek_id, other._kek_id)

    def __hash__(self) -> int:
        return hash(self._kek_id)


def _hkdf_expand(key: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=SHA256(), length=length, info=info).derive(key)


class MasterKeyProvider(_Unpicklable, ABC):
    """Where master keys come from: one current key, and previous keys for reading."""

    @abstractmethod
    def current_key(self) -> MasterKey:
        """The key that wraps new data keys."""

    def previous_keys(self) -> Sequence[MasterKey]:
        """Older keys still accepted for unwrapping (newest first). None by default."""
        return ()

    def all_keys(self) -> list[MasterKey]:
        """The current key, then the previous ones, without duplicates."""
        seen: set[str] = set()
        keys: list[MasterKey] = []
        for key in (self.current_key(), *self.previous_keys()):
            if key.kek_id not in seen:
                seen.add(key.kek_id)
                keys.append(key)
        return keys

    def find(self, kek_id: str) -> MasterKey | None:
        """The key with this fingerprint, or ``None`` if the provider does not have it."""
        for key in self.all_keys():
            if key.kek_id == kek_id:
                return key
        return None

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> MasterKeyProvider:
        """This provider configured from ``SECURE_KV_*`` settings (how the registry makes
        it for ``SECURE_KV_KEY_PROVIDER``). ``create``: make the key where the provider
        can (``secure-kv init`` / ``keygen --provider``). Override it in a provider that
        can be chosen by name."""
        raise ConfigurationError(f"{cls.__name__} cannot be configured from settings: pass it in code")

    def __repr__(self) -> str:
        try:
            ids = [key.kek_id for key in self.all_keys()]
        except Exception:
            ids = ["unavailable"]
        return f"<{type(self).__name__} kek_ids={ids}>"


class ReloadingProvider(MasterKeyProvider):
    """A provider whose keys live outside the process (keyring, key file) and may change
    while it runs. Asked for a key it does not hold (a data key rewrapped by a rotation in
    another process), it reads its source again, at most every ``RELOAD_INTERVAL``
    seconds; its current key is read again when older than ``CURRENT_MAX_AGE``. So a
    running process follows a master rotation without a restart.

    A subclass implements ``_reload()`` (read every key from its source) and calls
    ``_loaded()`` once its keys are read."""

    RELOAD_INTERVAL = 5.0
    #: After a rotation, new data keys are wrapped by the new key within this many seconds.
    CURRENT_MAX_AGE = 60.0
    _last_reload = float("-inf")

    def _reload(self) -> None:
        raise NotImplementedError

    def _loaded(self) -> None:
        """Subclasses call this once their keys are read."""
        self._last_reload = time.monotonic()

    def _reload_if_older_than(self, seconds: float) -> bool:
        if time.monotonic() - self._last_reload < seconds:
            return False
        self._last_reload = time.monotonic()
        self._reload()
        return True

    def find(self, kek_id: str) -> MasterKey | None:
        found = super().find(kek_id)
        if found is None and self._reload_if_older_than(self.RELOAD_INTERVAL):
            found = super().find(kek_id)
        return found


class RawKeyProvider(MasterKeyProvider):
    """A provider whose keys are raw 32-byte keys known at construction."""

    def __init__(self, keys: Iterable[RawMasterKey]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise MasterKeyError("no master key given")

    def current_key(self) -> MasterKey:
        return self._keys[0]

    def previous_keys(self) -> Sequence[MasterKey]:
        return tuple(self._keys[1:])


# The names these bases had before they were public; providers written then still import them.
_ReloadingProvider = ReloadingProvider
_RawKeyProvider = RawKeyProvider


def generate_master_key() -> str:
    """A new random master key in its text form (what ``secure-kv keygen`` prints)."""
    return format_master_key(os.urandom(MASTER_KEY_BYTES))


def format_master_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def parse_master_key(text: str, source: str) -> RawMasterKey:
    """Decode url-safe base64 of 32 bytes. ``source`` names where it came from, for errors.

    The text itself never appears in an error.
    """
    stripped = "".join(text.split())
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != MASTER_KEY_BYTES:
        raise MasterKeyError(
            f"{source} is not a valid master key: expected url-safe base64 of "
            f"{MASTER_KEY_BYTES} bytes (44 characters), as `secure-kv keygen` prints"
        )
    return RawMasterKey(raw)
