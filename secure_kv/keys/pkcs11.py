"""Master keys inside a PKCS#11 token (an HSM; SoftHSM2 in the tests), through python-pkcs11.

The master key is an AES-256 secret key generated *by the token*, marked sensitive and not
extractable, so its bytes never exist outside it. Data keys are wrapped and unwrapped by the
token with CKM_AES_GCM, the associated data passed as GCM's AAD: a wrapped key moved to
another workspace or version fails inside the token exactly as it does with a local key.

Wrapped layout (version 1): ``0x01 || nonce (12 bytes) || ciphertext || tag (16 bytes)``.
The nonce is random from this process (CKM_AES_GCM takes the IV from the caller); a master
key wraps one data key per workspace and rotation, far below the 2^32 messages per key
that NIST SP 800-38D allows with random nonces.

``kek_id`` is ``p11-`` followed by the hex of the key's CKA_ID, which ``keygen`` sets to 8
random bytes; a key made by another tool without an id gets a fingerprint of its token's
serial number and label instead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from secure_kv.errors import AuthenticationError, ConfigurationError, MasterKeyError, UnsupportedVersionError
from secure_kv.keys.base import MasterKey, MasterKeyProvider

if TYPE_CHECKING:
    from secure_kv.settings import Settings

__all__ = ["Pkcs11MasterKey"]

_FORMAT = 1
_NONCE_BYTES = 12
_TAG_BITS = 128
_T = TypeVar("_T")

_INSTALL = "the pkcs11 provider needs python-pkcs11: pip install 'secure-kv[hsm]'"


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise ConfigurationError(_INSTALL) from None
    return pkcs11


# The digest of the PIN each token was logged in with, by (module, token serial): login is
# per process in PKCS#11, so a second provider's PIN is checked against it instead.
_LOGGED_IN: dict[tuple[str, str], bytes] = {}
_MODULE_LOCKS: dict[str, threading.RLock] = {}


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(b"secure_kv/pkcs11-pin\0" + pin.encode()).digest()


class _Token:
    """One logged-in session on one token, shared by the keys of a provider.

    python-pkcs11 initialises the module without locking callbacks, which tells it that the
    application will not call it from several threads at once; so every call into one
    module, from any provider in this process, takes that module's lock. A session the
    module dropped (the module was re-initialised, the HSM restarted) is opened again once
    before a call fails.
    """

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self.module = module
        self.token_label = token_label
        self._pin = pin
        self._lock = _MODULE_LOCKS.setdefault(module, threading.RLock())
        self._session: Any = None
        self.serial = ""
        with self._lock:
            self._open()

    def _lib(self) -> Any:
        pkcs11 = _pkcs11()
        if not Path(self.module).is_file():
            raise MasterKeyError(
                f"PKCS#11 module {self.module} does not exist: set SECURE_KV_PKCS11_MODULE to the HSM "
                "vendor's library (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
            )
        try:
            return pkcs11.lib(self.module)
        except pkcs11.PKCS11Error as error:
            raise MasterKeyError(
                f"cannot load the PKCS#11 module {self.module} ({type(error).__name__}): check "
                "SECURE_KV_PKCS11_MODULE and the module's own configuration"
            ) from None

    def _open(self) -> None:
        pkcs11 = _pkcs11()
        lib = self._lib()
        try:
            token = lib.get_token(token_label=self.token_label)
        except pkcs11.NoSuchToken:
            # A token made after the module was loaded is listed only once it is initialised
            # again (SoftHSM2 reads its token directory in C_Initialize).
            lib.reinitialize()
            try:
                token = lib.get_token(token_label=self.token_label)
            except pkcs11.NoSuchToken:
                raise MasterKeyError(
                    f"no PKCS#11 token labelled {self.token_label!r} in {self.module}: check "
                    "SECURE_KV_PKCS11_TOKEN_LABEL (SoftHSM2: `softhsm2-util --show-slots`)"
                ) from None
        except pkcs11.PKCS11Error as error:
            raise MasterKeyError(
                f"cannot list the tokens of PKCS#11 module {self.module} ({type(error).__name__})"
            ) from None
        serial = getattr(token, "serial", "")
        self.serial = serial.hex() if isinstance(serial, bytes) else str(serial)
        try:
            self._session = token.open(user_pin=self._pin, rw=True)
            _LOGGED_IN[(self.module, self.serial)] = _pin_digest(self._pin)
        except pkcs11.UserAlreadyLoggedIn:
            # Login is per application: another provider in this process logged in already.
            # The token cannot check this PIN again, so it must match the one that did.
            known = _LOGGED_IN.get((self.module, self.serial))
            if known is None or not hmac.compare_digest(known, _pin_digest(self._pin)):
                raise self._wrong_pin() from None
            self._session = token.open(rw=True)
        except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
            raise self._wrong_pin() from None
        except (pkcs11.PinLocked, pkcs11.PinExpired, pkcs11.UserPinNotInitialized) as error:
            raise MasterKeyError(
                f"PKCS#11 token {self.token_label!r} is locked ({type(error).__name__}): its security "
                "officer must reset the user PIN"
            ) from None
        except pkcs11.PKCS11Error as error:
            raise MasterKeyError(
                f"cannot open a session on PKCS#11 token {self.token_label!r} ({type(error).__name__})"
            ) from None

    def _wrong_pin(self) -> MasterKeyError:
        return MasterKeyError(
            f"the PKCS#11 PIN for token {self.token_label!r} is wrong: check SECURE_KV_PKCS11_PIN or "
            "SECURE_KV_PKCS11_PIN_FILE (repeated wrong PINs lock most tokens)"
        )

    def call(self, action: Callable[[Any], _T]) -> _T:
        """Run ``action(session)``; reopen a dropped session once."""
        pkcs11 = _pkcs11()
        dropped = (
            pkcs11.SessionHandleInvalid,
            pkcs11.SessionClosed,
            pkcs11.ObjectHandleInvalid,
            pkcs11.KeyHandleInvalid,
            pkcs11.UserNotLoggedIn,
            pkcs11.DeviceRemoved,
            pkcs11.TokenNotPresent,
        )
        with self._lock:
            try:
                return action(self._session)
            except dropped:
                self._open()
                return action(self._session)

    def has_key(self, label: str) -> bool:
        """Whether the token holds an AES key labelled ``label`` (no key object leaves the
        locked call: see :meth:`_find`)."""
        return self._find(label, lambda key: True) is not None

    def find_key_id(self, label: str) -> bytes | None:
        """The CKA_ID of the AES key labelled ``label`` (``b""`` if it has none or it cannot
        be read), else ``None``: found and read in one call, under the module's lock."""
        pkcs11 = _pkcs11()

        def read_id(key: Any) -> bytes:
            try:
                return bytes(key[pkcs11.Attribute.ID] or b"")
            except pkcs11.PKCS11Error:
                return b""

        return self._find(label, read_id)

    def _find(self, label: str, then: Callable[[Any], _T]) -> _T | None:
        """``then(key)`` for the key labelled ``label``, inside the same locked call: a key
        object is a handle into this session, so every use of it must hold the lock too."""
        pkcs11 = _pkcs11()

        def find(session: Any) -> _T:
            key = session.get_key(
                object_class=pkcs11.ObjectClass.SECRET_KEY, key_type=pkcs11.KeyType.AES, label=label
            )
            return then(key)

        try:
            return self.call(find)
        except pkcs11.NoSuchKey:
            return None
        except pkcs11.MultipleObjectsReturned:
            raise MasterKeyError(
                f"PKCS#11 token {self.token_label!r} holds several AES keys labelled {label!r}: "
                "give each master key its own label"
            ) from None


class Pkcs11Key(MasterKey):
    """One AES key inside the token, found by label. Its bytes never leave the token."""

    def __init__(self, token: _Token, label: str) -> None:
        self._token = token
        self.label = label
        # The id is read in the locked call that finds the key: read outside it, it raced
        # another thread's token calls (the module is not initialised for threads), which
        # could fail the read (the kek_id then fell back to the digest below: a different
        # kek_id for the same key) or leave the token's session state corrupt.
        key_id = token.find_key_id(label)
        if key_id is None:
            raise MasterKeyError(
                f"no AES key labelled {label!r} in PKCS#11 token {token.token_label!r}: create it with "
                "`secure-kv keygen --provider pkcs11` or check SECURE_KV_PKCS11_KEY_LABEL"
            )
        if key_id:
            self._kek_id = "p11-" + key_id.hex()[:56]
        else:
            digest = hashlib.sha256(f"{token.serial}/{label}".encode()).hexdigest()
            self._kek_id = "p11-" + digest[:16]

    @property
    def kek_id(self) -> str:
        return self._kek_id

    def _run(self, operation: str, data: bytes, nonce: bytes, associated_data: bytes) -> bytes:
        pkcs11 = _pkcs11()
        params = pkcs11.GCMParams(nonce, associated_data, _TAG_BITS)

        def run(session: Any) -> bytes:
            key = session.get_key(
                object_class=pkcs11.ObjectClass.SECRET_KEY, key_type=pkcs11.KeyType.AES, label=self.label
            )
            method = key.encrypt if operation == "encrypt" else key.decrypt
            return bytes(method(data, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params))

        try:
            return self._token.call(run)
        except pkcs11.NoSuchKey:
            raise MasterKeyError(
                f"the key labelled {self.label!r} is gone from PKCS#11 token {self._token.token_label!r}"
            ) from None

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        pkcs11 = _pkcs11()
        nonce = os.urandom(_NONCE_BYTES)
        try:
            sealed = self._run("encrypt", plaintext, nonce, associated_data)
        except pkcs11.PKCS11Error as error:
            raise MasterKeyError(
                f"PKCS#11 token {self._token.token_label!r} refused to wrap a data key "
                f"({type(error).__name__}): check the token and that the key allows CKM_AES_GCM"
            ) from None
        return bytes([_FORMAT]) + nonce + sealed

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        pkcs11 = _pkcs11()
        if wrapped and wrapped[0] > _FORMAT:
            raise UnsupportedVersionError(
                f"wrapped key has format {wrapped[0]}, newer than this secure_kv reads ({_FORMAT}): "
                "upgrade secure_kv"
            )
        if len(wrapped) < 1 + _NONCE_BYTES + _TAG_BITS // 8 or wrapped[0] != _FORMAT:
            raise AuthenticationError("wrapped key is malformed")
        nonce = wrapped[1 : 1 + _NONCE_BYTES]
        unavailable = (pkcs11.DeviceError, pkcs11.DeviceMemory, pkcs11.HostMemory, pkcs11.PinLocked)
        try:
            return self._run("decrypt", wrapped[1 + _NONCE_BYTES :], nonce, associated_data)
        except unavailable as error:
            raise MasterKeyError(
                f"PKCS#11 token {self._token.token_label!r} failed ({type(error).__name__}): check the HSM"
            ) from None
        except pkcs11.PKCS11Error:
            # SoftHSM2 answers a failed GCM tag with CKR_GENERAL_ERROR, others with
            # CKR_ENCRYPTED_DATA_INVALID: both mean "not what was wrapped here".
            raise AuthenticationError("wrapped key failed authentication") from None


class Pkcs11MasterKey(MasterKeyProvider):
    """Master keys in a PKCS#11 token: the first label is current, later ones previous.

    ``module``: the PKCS#11 library's path; ``token_label``: the token; ``key_labels``: one
    label or several (current first); ``pin``: the user PIN. ``create=True`` generates the
    current key in the token when it has none (non-extractable, sensitive).
    """

    def __init__(
        self,
        module: str | os.PathLike[str],
        token_label: str,
        key_labels: str | Sequence[str],
        pin: str,
        *,
        create: bool = False,
    ) -> None:
        labels = [key_labels] if isinstance(key_labels, str) else list(key_labels)
        labels = [label.strip() for label in labels if label.strip()]
        if not labels:
            raise ConfigurationError("the pkcs11 provider needs a key label (SECURE_KV_PKCS11_KEY_LABEL)")
        self._token = _Token(os.fspath(module), token_label, pin)
        #: True when this call generated the current key in the token.
        self.created = False
        if create and not self._token.has_key(labels[0]):
            self.generate_key(labels[0])
            self.created = True
        self._keys = [Pkcs11Key(self._token, label) for label in labels]

    def generate_key(self, label: str) -> None:
        """Make an AES-256 key in the token: sensitive, never extractable, for GCM only."""
        pkcs11 = _pkcs11()
        attribute = pkcs11.Attribute
        template = {
            attribute.SENSITIVE: True,
            attribute.EXTRACTABLE: False,
            attribute.ENCRYPT: True,
            attribute.DECRYPT: True,
            attribute.WRAP: False,
            attribute.UNWRAP: False,
            attribute.SIGN: False,
            attribute.VERIFY: False,
            attribute.DERIVE: False,
            attribute.PRIVATE: True,
        }

        def generate(session: Any) -> Any:
            return session.generate_key(
                pkcs11.KeyType.AES, 256, label=label, id=os.urandom(8), store=True, template=template
            )

        try:
            self._token.call(generate)
        except pkcs11.PKCS11Error as error:
            raise MasterKeyError(
                f"PKCS#11 token {self._token.token_label!r} could not generate an AES-256 key "
                f"({type(error).__name__}): check that the token is writable and supports AES"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> Pkcs11MasterKey:
        missing = [
            name
            for name, value in (
                ("SECURE_KV_PKCS11_MODULE", settings.pkcs11_module),
                ("SECURE_KV_PKCS11_TOKEN_LABEL", settings.pkcs11_token_label),
                ("SECURE_KV_PKCS11_KEY_LABEL", settings.pkcs11_key_label),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError(f"SECURE_KV_KEY_PROVIDER=pkcs11 needs {', '.join(missing)}")
        assert settings.pkcs11_module and settings.pkcs11_token_label and settings.pkcs11_key_label
        return cls(
            settings.pkcs11_module,
            settings.pkcs11_token_label,
            settings.pkcs11_key_label.split(","),
            _pin(settings),
            create=create,
        )

    def current_key(self) -> MasterKey:
        return self._keys[0]

    def previous_keys(self) -> Sequence[MasterKey]:
        return tuple(self._keys[1:])


def _pin(settings: Settings) -> str:
    if settings.pkcs11_pin is not None:
        return settings.pkcs11_pin.get_secret_value()
    if settings.pkcs11_pin_file is not None:
        try:
            return settings.pkcs11_pin_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise MasterKeyError(
                f"cannot read the PKCS#11 PIN file {settings.pkcs11_pin_file} ({type(error).__name__})"
            ) from None
    raise MasterKeyError(
        "no PKCS#11 PIN: set SECURE_KV_PKCS11_PIN_FILE (a file holding the user PIN) or SECURE_KV_PKCS11_PIN"
    )
