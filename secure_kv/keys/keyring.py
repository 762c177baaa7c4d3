"""Master keys in the operating system's keyring, through the ``keyring`` package.

Entries, under the service name (default ``secure-kv``):

- ``<username>``: the current key (url-safe base64);
- ``<username>.previous``: comma-separated ``kek_id``\\ s of previous keys, newest first;
- ``<username>.<kek_id>``: each previous key, kept under its own versioned name.

Backends that would keep the key in plaintext, or none at all, are refused with an error
that says what to install instead: a secrets store must never fall back silently. Refused
are keyring's fail and null backends, keyrings.alt's plaintext ones and every subclass of
them (checked with ``isinstance`` against the real classes), and any backend that keyring's
own priority rates a fallback (below 1) or not usable here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keyring
import keyring.errors
from keyring.backends.chainer import ChainerBackend

from secure_kv.errors import MasterKeyError
from secure_kv.keys.base import (
    MasterKey,
    RawMasterKey,
    ReloadingProvider,
    generate_master_key,
    parse_master_key,
)

if TYPE_CHECKING:
    from secure_kv.settings import Settings

__all__ = ["INSECURE_BACKENDS", "MIN_PRIORITY", "KeyringMasterKey"]

log = logging.getLogger("secure_kv.keys")

DEFAULT_SERVICE = "secure-kv"
DEFAULT_USERNAME = "master-key"

# Backends that store nothing, fail every call, or write secrets to disk in plaintext.
# Refused with their subclasses (see _insecure_reason), whatever priority a subclass claims.
INSECURE_BACKENDS = frozenset(
    {
        "keyring.backends.fail.Keyring",
        "keyring.backends.null.Keyring",
        "keyrings.alt.file.PlaintextKeyring",
        "keyrings.alt.pyfs.PlaintextKeyring",
        "keyrings.alt.Gnome.Keyring",  # deprecated GnomeKeyring bindings, unmaintained
    }
)
#: keyring's own scale: "a priority of one or greater is recommended"; below is a fallback
#: (keyrings.alt's files, keyring's fail and null backends).
MIN_PRIORITY = 1

_INSTALL_HINT = (
    "install a secure keyring backend (Linux desktop: a Secret Service such as "
    "gnome-keyring or KeePassXC with `pip install secretstorage`; servers: "
    "`pip install keyrings.cryptfile`), or choose another provider with "
    "SECURE_KV_KEY_PROVIDER=env (SECURE_KV_MASTER_KEY) or =file (SECURE_KV_MASTER_KEY_FILE)"
)


def _backend_name(backend: Any) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def _insecure_classes() -> list[type]:
    """The real classes of :data:`INSECURE_BACKENDS` among the modules already imported.

    A module not imported has no instances, nor subclasses, so nothing is imported here
    (keyrings.alt is optional, and its Gnome module needs bindings most hosts lack).
    """
    found = []
    for name in INSECURE_BACKENDS:
        module_name, _, class_name = name.rpartition(".")
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type):
            found.append(cls)
    return found


def _insecure_reason(backend: Any) -> str | None:
    """Why ``backend`` must not hold a master key, or ``None`` if it may."""
    cls = type(backend)
    if isinstance(backend, tuple(_insecure_classes())) or any(
        f"{base.__module__}.{base.__qualname__}" in INSECURE_BACKENDS for base in cls.__mro__
    ):
        return "it stores nothing, fails every call, or keeps secrets in plaintext"
    try:
        priority = float(backend.priority)
    except Exception as error:  # keyring's way to say "not usable here": RuntimeError
        # A secure backend that cannot be reached now (a keyring daemon down, no D-Bus
        # session) is a service to check, not a backend to replace.
        raise MasterKeyError(
            f"the keyring backend {_backend_name(backend)} is not usable here ({type(error).__name__}): "
            "check that the OS keyring is running and unlocked (Secret Service: a D-Bus session "
            f"with gnome-keyring or KeePassXC); otherwise {_INSTALL_HINT}"
        ) from None
    if not priority >= MIN_PRIORITY:  # also refuses NaN
        return f"keyring rates it a fallback, not recommended (priority {priority:g} < {MIN_PRIORITY})"
    return None


def _check_backend(backend: Any) -> None:
    if isinstance(backend, ChainerBackend):
        members = list(getattr(backend, "backends", None) or [])
        if not members:
            raise MasterKeyError(f"no usable OS keyring backend: {_INSTALL_HINT}")
        for member in members:
            _check_backend(member)
        return
    reason = _insecure_reason(backend)
    if reason is not None:
        raise MasterKeyError(
            f"the keyring backend {_backend_name(backend)} is not secure enough for a master key "
            f"({reason}): {_INSTALL_HINT}"
        )


class KeyringMasterKey(ReloadingProvider):
    """The master key kept in the OS keyring.

    ``create=True`` makes and stores a new key when none exists (``secure-kv init`` does
    this); otherwise a missing key is a :class:`MasterKeyError`. ``backend`` defaults to
    ``keyring.get_keyring()``.
    """

    def __init__(
        self,
        service: str = DEFAULT_SERVICE,
        username: str = DEFAULT_USERNAME,
        *,
        create: bool = False,
        backend: Any = None,
    ) -> None:
        self.service = service
        self.username = username
        self._backend = backend if backend is not None else keyring.get_keyring()
        _check_backend(self._backend)
        text = self._read(username)
        #: True when this call generated and stored a new key (``create=True``).
        self.created = False
        if text is None:
            if not create:
                raise MasterKeyError(
                    f"no master key in the OS keyring (service {service!r}, user {username!r}): "
                    "run `secure-kv init` to create one"
                )
            text = generate_master_key()
            self._write(username, text)
            self.created = True
        self._current = parse_master_key(text, f"keyring entry {service}/{username}")
        self._previous = self._read_previous()
        self._loaded()

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> KeyringMasterKey:
        return cls(create=create)

    def current_key(self) -> MasterKey:
        self._reload_if_older_than(self.CURRENT_MAX_AGE)
        return self._current

    def _reload(self) -> None:
        # Another process rotated the master key: take the keyring's current and previous
        # keys, so data keys rewrapped under the new one open here too.
        try:
            text = self._read(self.username)
            if text is not None:
                self._current = parse_master_key(text, f"keyring entry {self.service}/{self.username}")
            self._previous = self._read_previous()
        except MasterKeyError as error:  # keep the keys we have
            log.warning("the OS keyring could not be read again: %s", error)

    def previous_keys(self) -> Sequence[MasterKey]:
        return tuple(self._previous)

    def generate_new_key(self) -> MasterKey:
        """Make a new current key; keep the old one as a previous key under its kek_id.

        Used by ``secure-kv rotate master --generate``. Old entries are written first, so
        a crash part-way never loses the key that wrapped the existing data keys.
        """
        old = self._current
        old_text = self._read(self.username)
        assert old_text is not None
        self._write(f"{self.username}.{old.kek_id}", old_text)
        ids = [old.kek_id, *(key.kek_id for key in self._previous if key.kek_id != old.kek_id)]
        self._write(f"{self.username}.previous", ",".join(ids))
        new_text = generate_master_key()
        self._write(self.username, new_text)
        self._current = parse_master_key(new_text, f"keyring entry {self.service}/{self.username}")
        self._previous = self._read_previous()
        return self._current

    def forget_previous_keys(self) -> None:
        """Delete every previous key from the keyring (after ``rotate master`` finished)."""
        for key in self._previous:
            try:
                self._backend.delete_password(self.service, f"{self.username}.{key.kek_id}")
            except keyring.errors.PasswordDeleteError:
                pass
        self._write(f"{self.username}.previous", "")
        self._previous = []

    def _read_previous(self) -> list[RawMasterKey]:
        listing = self._read(f"{self.username}.previous") or ""
        keys = []
        for kek_id in (part.strip() for part in listing.split(",")):
            if not kek_id:
                continue
            entry = f"{self.username}.{kek_id}"
            text = self._read(entry)
            if text is None:
                raise MasterKeyError(
                    f"keyring entry {self.service}/{entry} (a previous master key) is missing"
                )
            keys.append(parse_master_key(text, f"keyring entry {self.service}/{entry}"))
        return keys

    def _read(self, username: str) -> str | None:
        try:
            value = self._backend.get_password(self.service, username)
        except keyring.errors.KeyringError as error:
            raise MasterKeyError(
                f"cannot read the OS keyring ({type(error).__name__}): check that it is running and "
                f"unlocked (Secret Service: gnome-keyring, KeePassXC); otherwise {_INSTALL_HINT}"
            ) from None
        return value if isinstance(value, str) else None

    def _write(self, username: str, text: str) -> None:
        try:
            self._backend.set_password(self.service, username, text)
        except keyring.errors.KeyringError as error:
            raise MasterKeyError(
                f"cannot write to the OS keyring ({type(error).__name__}): check that it is running and "
                f"unlocked (Secret Service: gnome-keyring, KeePassXC); otherwise {_INSTALL_HINT}"
            ) from None
