"""Encrypted state for Dify plugins.

Two ways, both with the interface of ``dify_plugin``'s ``StorageInvocation`` (the
``self.session.storage`` of a tool or endpoint): ``set(key, val)``, ``get(key)``,
``delete(key)``, ``exist(key)``. docs/dify.md shows both in a plugin.

(a) A :class:`~secure_kv.store.Workspace` of a :class:`~secure_kv.SecureStore` on a database
    of the plugin's own already has that interface (see :class:`PluginStorage`), with
    ``category`` and ``ttl`` as extra keyword arguments.
(b) :class:`EncryptedStorage` wraps the plugin's real ``self.session.storage`` and seals
    every value before it is handed to the SDK, so Dify's own storage, which keeps values
    in plaintext files or objects, only ever holds ciphertext.

Both return ``None`` from ``get`` for a missing or expired key, as Dify's documentation
promises. The SDK itself (0.7.x on Python 3.11 and 0.10.x on 3.12+, both tested)
raises instead: not its
``StorageInvocationError`` (nor the ``NotFoundError`` its docstring names), but a bare
``Exception`` from ``BackwardsInvocation._line_converter_wrapper`` (dify_plugin/core/runtime.py)
carrying the daemon's error reply, "load data failed, please check if the key is correct or
you have not set it" (task.go, ``executeDifyInvocationStorageTask``). The daemon sends that
same message for every failed load, so :class:`EncryptedStorage` asks ``exist`` before it
calls a failed read a missing key; an SDK whose ``get`` returns ``None`` works too.

**Dify's storage rules**, as read in the plugin daemon's source
(``langgenius/dify-plugin-daemon`` at commit bdb5642a, August 2026; files below) and
enforced here before anything is sent, with :class:`~secure_kv.errors.InvalidInputError`
messages that say which rule a key broke:

- ``internal/core/persistence/persistence.go`` (``checkPathTraversal``, ``Save``): a key
  whose ``path.Clean`` form contains ``..``, ``//`` or ``\\`` is refused as a path
  traversal attempt (on every operation); a key longer than 256 bytes is refused on
  ``set``. Here: no ``..`` and no backslash anywhere, at most 256 bytes of UTF-8.
- ``internal/core/persistence/wrapper.go`` (``getFilePath``): the key is passed through
  ``path.Clean`` and joined under ``<storage path>/<tenant>/<plugin>/``, so ``a/``,
  ``/a``, ``./a`` and ``a//b`` would name the same file as ``a`` and ``a/b``. Here a key
  must already be clean: ``/``-separated segments, none of them empty or ``.``.
- ``internal/core/dify_invocation/types.go`` (``InvokeStorageRequest``): the key is
  required (not empty); the value travels hex-encoded in a JSON request.
- ``internal/types/app/config.go`` (``PLUGIN_RUNTIME_MAX_BUFFER_SIZE``, default 5242880)
  with ``internal/core/local_runtime/instance.go``: the daemon reads a locally run
  plugin's output one line at a time, at most 5 MiB a line, and stops the plugin when a
  line is longer. A ``set`` request is one line carrying the value in hex, so a sealed
  record may be at most (5 MiB - 4 KiB for the request around it) / 2 bytes:
  :data:`DEFAULT_MAX_VALUE_BYTES` (2,619,328 bytes of plaintext). A deployment that
  raised that buffer, or runs plugins serverless, can pass ``max_value_bytes``.
- ``internal/core/persistence/persistence.go`` (``Save``) with
  ``pkg/entities/plugin_entities/plugin_declaration.go``: all values of a tenant's plugin
  together may use at most the storage size its manifest declares (1 KiB to 1 GiB) and
  ``PERSISTENCE_STORAGE_MAX_SIZE`` (100 MiB by default). Each sealed record takes
  :data:`RECORD_OVERHEAD` bytes more than its value, and a data key 87 bytes (two copies).
  A write over the quota comes back as :class:`~secure_kv.errors.StorageError`.

**Tenant binding.** One plugin process serves many Dify workspaces (tenants), and the SDK
tells a tool nothing about which one called it. With a master key shared by every tenant,
whoever can write Dify's plugin storage could copy one tenant's data key and records into
another's, where they would open. So every :class:`EncryptedStorage` takes a
``tenant_secret``: a secret only that tenant holds (a ``secret-input`` provider credential
it fills in). HKDF-SHA256 turns it into a 32-byte tenant binding, bound into the
associated data of every data key and record, and a 32-byte tenant key mixed into every
data key, so a record needs both the master key and the tenant's secret to open, and
entries copied between tenants fail authentication. The other safe set-up gives each
tenant its own master key, ``master_key=StaticMasterKey(<key from the tenant's credential>)``,
with no ``tenant_secret``: another tenant's entries were wrapped by another key. Any other
provider (env, file, keyring, HSM, KMS: one key for the whole deployment) without a
``tenant_secret``, or a short one, is a :class:`~secure_kv.errors.ConfigurationError`.

**Layout in Dify's storage**, format 2 (specified in docs/dify.md, pinned by
``tests/vectors/dify_v2.json``). User keys are stored under their own names, in plaintext;
names starting with :data:`RESERVED_PREFIX` are reserved:

- ``__secure_kv__/v2/dek-<id>``: one data key (DEK), random 256 bits with a random 32-bit
  id, wrapped by the master key with associated data ``"secure_kv/dify/v2/dek"`` | tenant
  binding | namespace | id (labels distinct from the SQL store's, so nothing moves between
  the two), and stored with the master key's ``kek_id``, so a wrong master key raises
  :class:`~secure_kv.errors.MasterKeyError` rather than looking like tampering. Never
  overwritten.
- ``__secure_kv__/v2/dek``: a copy of the data key new values are sealed with.
- every other key: a record, ``"SKVD"`` | format | category | ``expires_at`` | the value
  sealed by :func:`~secure_kv.envelope.seal_value` under the tenant's data key, whose
  associated data binds ``"secure_kv/dify/v2/record"``, the tenant binding, the namespace,
  the key, the category and ``expires_at``.

Format 1 (secure_kv before this layout) bound no tenant: its entries, which an attacker
could have copied from another tenant, are refused with an
:class:`~secure_kv.errors.AuthenticationError` saying so, and its ``__secure_kv__/dek*``
entries are left unused.

**Creating the data key without compare-and-set.** Dify's storage has none, so two plugin
processes may both find no data key and both create one. Each writes its new key under its
own name first, then the ``__secure_kv__/dek`` pointer, then reads the pointer back and
uses whatever it holds. The last writer wins the pointer; the other key stays stored under
its own name, and every value names its key's id in its header, so values sealed under
either key stay readable. What remains: two processes can draw the same random id at the
same moment (chance 2^-32 per pair of simultaneous creators, and an ``exist`` check first
narrows it to that moment); then one key overwrites the other and values sealed under the
lost one in that window fail with :class:`~secure_kv.errors.AuthenticationError`.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure_kv._clock import now_micros
from secure_kv.categories import CATEGORIES_BY_CODE, CATEGORY_CODES, Category, parse_category
from secure_kv.envelope import (
    NO_EXPIRY,
    SEAL_OVERHEAD,
    DataKey,
    Header,
    new_data_key_bytes,
    open_value,
    parse_header,
    record_context,
    seal_for_test_vectors,
    seal_value,
)
from secure_kv.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    InvalidTypeError,
    MasterKeyError,
    SecureKVError,
    StorageError,
    UnsupportedVersionError,
)
from secure_kv.keys import MasterKey, MasterKeyProvider, StaticMasterKey, provider_from_settings
from secure_kv.settings import CredentialPolicy, Settings, load_settings
from secure_kv.store.policy import apply_credential_policy, expiry_for
from secure_kv.validation import Buffer, check_key, check_ttl, check_value, check_workspace_name

if TYPE_CHECKING:
    from secure_kv.store import Workspace

__all__ = [
    "CURRENT_DATA_KEY",
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_NAMESPACE",
    "MIN_TENANT_SECRET_BYTES",
    "RECORD_OVERHEAD",
    "RESERVED_PREFIX",
    "EncryptedStorage",
    "PluginStorage",
    "check_dify_key",
]

#: Keys starting with this are secure_kv's own (its data keys); users cannot use them.
RESERVED_PREFIX = "__secure_kv__"
#: Where the data key that seals new values is kept (format 2; format 1 used ``__secure_kv__/dek``).
CURRENT_DATA_KEY = f"{RESERVED_PREFIX}/v2/dek"
#: The shortest ``tenant_secret`` accepted: 32 bytes (``secure-kv keygen`` prints 44 characters).
MIN_TENANT_SECRET_BYTES = 32
#: The workspace label bound into every record and data key unless another is given.
DEFAULT_NAMESPACE = "dify-plugin-storage"

# The plugin daemon's limits (see the module docstring for the files they come from).
DAEMON_MAX_KEY_BYTES = 256
DAEMON_MAX_LINE_BYTES = 5 * 1024 * 1024
# Room for the JSON request around the hex value: the envelope, ids and the key, which
# JSON may escape to 6 bytes a byte (256 * 6 = 1,536); measured at about 2 KiB at worst.
_REQUEST_FRAMING_RESERVE = 4096

_RECORD_MAGIC = b"SKVD"
_RECORD_FORMAT = 2
_LEGACY_FORMAT = 1  # bound no tenant: refused (see the module docstring)
_RECORD_HEADER = struct.Struct(">4sBBq")  # magic, format, category code, expires_at
#: Bytes a sealed record takes beyond its value: 14 of record header, 50 of envelope.
RECORD_OVERHEAD = _RECORD_HEADER.size + SEAL_OVERHEAD
#: The largest value whose ``set`` request fits the daemon's default 5 MiB line.
DEFAULT_MAX_VALUE_BYTES = (DAEMON_MAX_LINE_BYTES - _REQUEST_FRAMING_RESERVE) // 2 - RECORD_OVERHEAD

_KEY_RECORD_MAGIC = b"SKVK"
_KEY_RECORD_FORMAT = 2
_KEY_RECORD_HEADER = struct.Struct(">4sBIB")  # magic, format, key id, length of kek_id
_MAX_CREATE_ATTEMPTS = 8
_MAX_CACHED_KEYS = 64

# Labels of format 2, distinct from the SQL store's ("secure_kv/v1/dek", a bare context).
_TENANT_SALT = b"secure_kv/dify/v2/tenant"
_TENANT_INFO = b"secure_kv/dify/v2/tenant-keys"
_DEK_LABEL = b"secure_kv/dify/v2/dek"
_DATA_KEY_INFO = b"secure_kv/dify/v2/data-key"
_RECORD_LABEL = b"secure_kv/dify/v2/record"
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class PluginStorage(Protocol):
    """The interface of ``dify_plugin``'s ``StorageInvocation`` (``self.session.storage``).

    ``get`` is typed as Dify's documentation describes it (``None`` for a missing key);
    the SDK's own ``get`` returns ``bytes`` and raises for a missing key, which fits too.
    """

    def set(self, key: str, val: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def exist(self, key: str) -> bool: ...


if TYPE_CHECKING:
    # mypy proves what the contract promises: a Workspace, and EncryptedStorage itself,
    # can stand wherever a plugin expects ``self.session.storage``.
    def _workspace_is_plugin_storage(workspace: Workspace) -> PluginStorage:
        return workspace

    def _encrypted_storage_is_plugin_storage(storage: EncryptedStorage) -> PluginStorage:
        return storage


def check_dify_key(key: object) -> bytes:
    """Return the key's UTF-8 bytes if Dify's storage takes it unchanged and it is not reserved.

    The rules are secure_kv's (a ``str`` of 1-256 bytes of UTF-8, no NUL) and the plugin
    daemon's (no ``..``, no backslash, a clean ``/``-separated path). Messages never echo
    the key: a misplaced argument may be a secret.
    """
    encoded = check_key(key)
    assert isinstance(key, str)  # check_key accepted it
    if "\\" in key:
        raise InvalidInputError(
            "key must not contain a backslash: Dify's plugin daemon refuses it as a path traversal attempt"
        )
    if ".." in key:
        raise InvalidInputError(
            "key must not contain '..': Dify's plugin daemon refuses it as a path traversal attempt"
        )
    if any(segment in ("", ".") for segment in key.split("/")):
        raise InvalidInputError(
            "key must be a clean path: no leading or trailing '/', no '//' and no '.' segment "
            "(Dify stores a key as a file path and would merge such a key with another)"
        )
    if key.startswith(RESERVED_PREFIX):
        raise InvalidInputError(
            f"keys starting with {RESERVED_PREFIX!r} are reserved for secure_kv's data keys"
        )
    return encoded


# --- Byte layouts (docs/dify.md) -------------------------------------------------------


@dataclass(frozen=True, repr=False)
class _Tenant:
    """What a tenant's secret yields: a binding for associated data and a key for its DEKs."""

    binding: bytes
    key: bytes

    def __reduce__(self) -> NoReturn:
        raise TypeError("a tenant binding holds key material and cannot be pickled")


def _tenant_from_secret(secret: object) -> _Tenant:
    """HKDF-SHA256 of the tenant's secret: 32 bytes of binding, then 32 bytes of tenant key.

    The secret is checked, never echoed: it is a credential.
    """
    if isinstance(secret, str):
        raw = secret.strip().encode("utf-8")
    elif isinstance(secret, (bytes, bytearray)):
        raw = bytes(secret)
    elif secret is None:
        raise ConfigurationError(
            "EncryptedStorage over a master key shared by every tenant needs tenant_secret=: a "
            "secret only this Dify workspace holds, such as a secret-input provider credential "
            "filled with `secure-kv keygen` output (self.runtime.credentials[...]); or give the "
            "tenant's own key as master_key=StaticMasterKey(...). Without either, one tenant's "
            "entries copied into another's storage would open there (docs/dify.md)"
        )
    else:
        raise InvalidTypeError(f"tenant_secret must be str or bytes, not {type(secret).__name__}")
    if len(raw) < MIN_TENANT_SECRET_BYTES:
        raise ConfigurationError(
            f"tenant_secret is {len(raw)} bytes; at least {MIN_TENANT_SECRET_BYTES} are needed: "
            "fill the credential with the output of `secure-kv keygen`"
        )
    derived = HKDF(algorithm=SHA256(), length=64, salt=_TENANT_SALT, info=_TENANT_INFO).derive(raw)
    return _Tenant(derived[:32], derived[32:])


# The binding of a storage whose master key is the tenant's own (a StaticMasterKey built from
# its credential): a fixed label, distinct from every secret-derived binding.
_OWN_KEY_DERIVED = HKDF(
    algorithm=SHA256(), length=64, salt=_TENANT_SALT, info=b"secure_kv/dify/v2/own-key"
).derive(b"the master key is the tenant's own")
_OWN_KEY_TENANT = _Tenant(_OWN_KEY_DERIVED[:32], _OWN_KEY_DERIVED[32:])


def _dek_associated_data(tenant: _Tenant, namespace: bytes, key_id: int) -> bytes:
    return _DEK_LABEL + tenant.binding + _U16.pack(len(namespace)) + namespace + _U32.pack(key_id)


def _wrap_dek(master: MasterKey, tenant: _Tenant, dek: bytes, namespace: bytes, key_id: int) -> bytes:
    return master.wrap(dek, _dek_associated_data(tenant, namespace, key_id))


def _unwrap_dek(master: MasterKey, tenant: _Tenant, wrapped: bytes, namespace: bytes, key_id: int) -> DataKey:
    """Unwrap and mix in the tenant key: the DEK alone, with the master key, opens nothing."""
    dek = master.unwrap(wrapped, _dek_associated_data(tenant, namespace, key_id))
    kdf = HKDF(algorithm=SHA256(), length=32, salt=tenant.key, info=_DATA_KEY_INFO + _U32.pack(key_id))
    return DataKey(kdf.derive(dek), namespace, key_id)


def _record_context(
    tenant: _Tenant, namespace: bytes, key: bytes, category_code: int, expires_at: int | None
) -> bytes:
    return _RECORD_LABEL + tenant.binding + record_context(namespace, key, category_code, expires_at)


@dataclass(frozen=True)
class _Record:
    category: Category
    expires_at: int | None
    sealed: bytes


def _seal_record(
    data_key: DataKey,
    tenant: _Tenant,
    namespace: bytes,
    key: bytes,
    category: Category,
    expires_at: int | None,
    value: Buffer,
    *,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """``"SKVD"`` | u8 format (2) | u8 category | i64 expires_at | sealed value (envelope format 1).

    ``salt`` and ``nonce`` are for test vectors only.
    """
    code = CATEGORY_CODES[category]
    context = _record_context(tenant, namespace, key, code, expires_at)
    if salt is None or nonce is None:
        sealed = seal_value(data_key, context, value)
    else:
        sealed = seal_for_test_vectors(data_key, context, value, salt, nonce)
    header = _RECORD_HEADER.pack(
        _RECORD_MAGIC, _RECORD_FORMAT, code, NO_EXPIRY if expires_at is None else expires_at
    )
    return header + bytes(sealed)


class _LegacyFormatError(AuthenticationError):
    """An entry of format 1: refused, with a message that says so rather than "tampered"."""


def _parse_record(blob: bytes) -> _Record:
    """Raise :class:`AuthenticationError` for anything but a record of a known format."""
    if len(blob) < _RECORD_HEADER.size or blob[:4] != _RECORD_MAGIC:
        raise AuthenticationError("not a secure_kv record")
    _, version, code, expires_at = _RECORD_HEADER.unpack_from(blob)
    if version > _RECORD_FORMAT:
        raise UnsupportedVersionError(
            f"record has format {version}: it was written by a newer secure_kv "
            f"(this one reads format {_RECORD_FORMAT}); upgrade secure_kv"
        )
    if version == _LEGACY_FORMAT:
        raise _LegacyFormatError(
            "has format 1 (an earlier secure_kv), which bound no tenant: it may have been copied "
            "from another tenant's storage, so it is not read; write the value again"
        )
    category = CATEGORIES_BY_CODE.get(code)
    if version != _RECORD_FORMAT or category is None:
        raise AuthenticationError("record header is malformed")
    return _Record(category, None if expires_at == NO_EXPIRY else expires_at, blob[_RECORD_HEADER.size :])


def _key_record(key_id: int, kek_id: str, wrapped: bytes) -> bytes:
    """``"SKVK"`` | u8 format (2) | u32 key id | u8 length | kek_id (ASCII) | wrapped DEK."""
    kek = kek_id.encode("ascii")
    if len(kek) > 255:
        raise MasterKeyError("the master key's kek_id is longer than 255 characters")
    return _KEY_RECORD_HEADER.pack(_KEY_RECORD_MAGIC, _KEY_RECORD_FORMAT, key_id, len(kek)) + kek + wrapped


def _parse_key_record(blob: bytes) -> tuple[int, str, bytes]:
    """The key id, the kek_id and the wrapped DEK; :class:`AuthenticationError` if malformed."""
    if len(blob) < _KEY_RECORD_HEADER.size or blob[:4] != _KEY_RECORD_MAGIC:
        raise AuthenticationError("not a secure_kv data key")
    _, version, key_id, kek_length = _KEY_RECORD_HEADER.unpack_from(blob)
    if version > _KEY_RECORD_FORMAT:
        raise UnsupportedVersionError(
            f"data key record has format {version}: it was written by a newer secure_kv; upgrade secure_kv"
        )
    if version == _LEGACY_FORMAT:
        raise _LegacyFormatError("has format 1, which bound no tenant; it is not read")
    start = _KEY_RECORD_HEADER.size
    kek = blob[start : start + kek_length]
    if version != _KEY_RECORD_FORMAT or len(kek) != kek_length or not kek.isascii():
        raise AuthenticationError("data key record is malformed")
    return key_id, kek.decode("ascii"), blob[start + kek_length :]


def _data_key_name(key_id: int) -> str:
    return f"{RESERVED_PREFIX}/v2/dek-{key_id:08x}"


# --- The wrapper -----------------------------------------------------------------------

_T = TypeVar("_T")


def _reason(error: BaseException) -> str:
    """The first line of an SDK or daemon error, short: enough to act on, nothing more."""
    lines = str(error).strip().splitlines()
    text = lines[0][:200] if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class EncryptedStorage:
    """Dify's plugin storage, encrypted on the plugin's side.

    ``EncryptedStorage(self.session.storage, master_key=provider, tenant_secret=secret)``
    has the same four methods as the storage it wraps, plus secure_kv's categories and TTLs::

        storage = EncryptedStorage(
            self.session.storage,
            master_key=EnvMasterKey(),
            tenant_secret=self.runtime.credentials["secure_kv_tenant_secret"],
        )
        storage.set("openai", b"sk-...", category=Category.TOKEN)
        storage.get("openai")        # b"sk-..."; None when missing or expired

    Every value is sealed with AES-256-GCM under a data key kept in the same storage,
    wrapped by the master key and mixed with the tenant key derived from ``tenant_secret``
    (required: at least 32 bytes only this tenant holds; see the module docstring). Values
    written under one ``tenant_secret`` do not open under another, so keep the credential.
    ``namespace`` is the workspace label bound into every record
    and data key; keep the default, or pick one per storage and never change it (records
    written under another namespace fail authentication). ``max_value_bytes`` defaults to
    what fits the daemon's 5 MiB request line (:data:`DEFAULT_MAX_VALUE_BYTES`) or
    ``SECURE_KV_MAX_VALUE_BYTES``, whichever is smaller; ``default_cache_ttl`` to
    ``SECURE_KV_DEFAULT_CACHE_TTL``.

    Create one per session (the SDK's storage belongs to one): the first write, or the
    first read of a value, fetches the data key, and the object keeps it in memory.
    """

    __slots__ = (
        "_credential_policy",
        "_current",
        "_default_cache_ttl",
        "_keys",
        "_lock",
        "_max_value_bytes",
        "_namespace_bytes",
        "_provider",
        "_storage",
        "_tenant",
        "namespace",
    )

    def __init__(
        self,
        storage: PluginStorage,
        master_key: MasterKeyProvider | None = None,
        *,
        tenant_secret: str | bytes | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        max_value_bytes: int | None = None,
        default_cache_ttl: float | None = None,
        credential_policy: CredentialPolicy | str | None = None,
    ) -> None:
        missing = [
            name for name in ("set", "get", "delete", "exist") if not callable(getattr(storage, name, None))
        ]
        if missing:
            raise InvalidTypeError(
                f"storage must be a plugin's self.session.storage (with set, get, delete and exist); "
                f"{type(storage).__name__} has no {', '.join(missing)}"
            )
        if master_key is not None and not isinstance(master_key, MasterKeyProvider):
            raise InvalidTypeError(
                "master_key must be a provider from secure_kv.keys (for raw bytes, "
                f"StaticMasterKey(key)), not {type(master_key).__name__}"
            )
        if max_value_bytes is not None and (
            isinstance(max_value_bytes, bool) or not isinstance(max_value_bytes, int) or max_value_bytes < 0
        ):
            raise InvalidInputError("max_value_bytes must be a non-negative int")
        cache_ttl = check_ttl(default_cache_ttl)
        if tenant_secret is None and isinstance(master_key, StaticMasterKey):
            # A key handed over in memory is this tenant's own (its secret-input credential,
            # docs/dify.md): another tenant's entries were wrapped by another key and do not
            # unwrap here, so the key itself binds the tenant.
            self._tenant = _OWN_KEY_TENANT
        else:
            self._tenant = _tenant_from_secret(tenant_secret)
        self._namespace_bytes = check_workspace_name(namespace)
        self.namespace = namespace
        settings: Settings | None = None
        policy: CredentialPolicy | None = None
        if credential_policy is not None:
            try:
                policy = CredentialPolicy(credential_policy)
            except ValueError:
                choices = ", ".join(repr(item.value) for item in CredentialPolicy)
                raise ConfigurationError(
                    f"invalid setting: credential_policy must be one of {choices}"
                ) from None
        if master_key is None or max_value_bytes is None or cache_ttl is None or policy is None:
            settings = load_settings()
        if master_key is None:
            assert settings is not None
            master_key = provider_from_settings(settings)
        master_key.current_key()  # fail now, not on the first write, if the key is unavailable
        self._provider = master_key
        if max_value_bytes is None:
            assert settings is not None
            max_value_bytes = min(DEFAULT_MAX_VALUE_BYTES, settings.max_value_bytes)
        self._max_value_bytes = max_value_bytes
        if cache_ttl is None:
            assert settings is not None
            cache_ttl = settings.default_cache_ttl
        self._default_cache_ttl = cache_ttl
        if policy is None:
            assert settings is not None
            policy = settings.credential_policy
        self._credential_policy = policy
        self._storage = storage
        self._current: DataKey | None = None
        self._keys: dict[int, DataKey] = {}
        self._lock = threading.Lock()

    # --- The four methods ---------------------------------------------------------------

    def set(
        self,
        key: str,
        val: bytes | bytearray | memoryview,
        *,
        category: Category | str = Category.PREFERENCE,
        ttl: float | Any = None,
    ) -> None:
        """Seal ``val`` and store it under ``key``, replacing any previous value.

        ``ttl`` (seconds or a timedelta) makes the entry expire; a cache entry always
        expires. An overwrite without ``ttl`` clears the previous expiry.
        """
        key_bytes = check_dify_key(key)
        value = check_value(val, sys.maxsize)
        if len(value) > self._max_value_bytes:
            raise InvalidInputError(
                f"value is {len(value)} bytes; at most {self._max_value_bytes} fit one request to "
                "Dify's plugin daemon (see max_value_bytes in docs/dify.md)"
            )
        chosen = parse_category(category)
        seconds = check_ttl(ttl)
        chosen = apply_credential_policy(self._credential_policy, value, chosen, self._describe(key))
        expiry = expiry_for(chosen, seconds, now_micros(), self._default_cache_ttl)
        data_key = self._current_key()
        blob = _seal_record(data_key, self._tenant, self._namespace_bytes, key_bytes, chosen, expiry, value)
        self._call(f"write {self._describe(key)}", lambda: self._storage.set(key, blob))

    def get(self, key: str) -> bytes | None:
        """The value, or ``None`` if the key is missing or expired.

        Raises :class:`AuthenticationError` if the stored record was altered, truncated or
        moved, and :class:`MasterKeyError` if its data key was wrapped by a master key the
        provider does not hold.
        """
        key_bytes = check_dify_key(key)
        blob = self._fetch(key)
        if blob is None:
            return None
        record = self._open_record(key, blob)
        if record.expires_at is not None and record.expires_at <= now_micros():
            return None  # left in place: deleting it here could delete a newer value written meanwhile
        try:
            header = parse_header(record.sealed)
        except UnsupportedVersionError as error:
            raise UnsupportedVersionError(f"{self._describe(key)}: {error}") from None
        except AuthenticationError:
            raise self._tampered(key) from None
        data_key = self._data_key(header.dek_version, key)
        return self._open_value(key, key_bytes, record, data_key, header)

    def exist(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value (read, but not decrypted).

        Like :meth:`Workspace.exist <secure_kv.store.Workspace.exist>` it reports what the
        record's header says; a stored blob that is not a readable record counts as
        present, and :meth:`get` then says what is wrong with it.
        """
        check_dify_key(key)
        blob = self._fetch(key)
        if blob is None:
            return False
        try:
            record = _parse_record(blob)
        except (AuthenticationError, UnsupportedVersionError):
            return True
        return record.expires_at is None or record.expires_at > now_micros()

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        check_dify_key(key)
        try:
            self._storage.delete(key)
        except SecureKVError:
            raise
        except Exception as error:
            # The daemon fails to delete a key it does not have (it cannot stat the file).
            if self._raw_exist(key) is False:
                return
            raise StorageError(
                f"Dify storage could not delete {self._describe(key)}: {_reason(error)}"
            ) from None

    # --- Data keys ----------------------------------------------------------------------

    def _current_key(self) -> DataKey:
        current = self._current
        if current is not None:
            return current
        with self._lock:
            if self._current is None:
                self._current = self._load_current()
            return self._current

    def _load_current(self) -> DataKey:
        for _ in range(_MAX_CREATE_ATTEMPTS):
            stored = self._fetch(CURRENT_DATA_KEY)
            if stored is not None:
                return self._open_key_record(stored, CURRENT_DATA_KEY, expected_id=None)
            self._create_data_key()
            # Read the pointer back and use what it holds: another process may have
            # written its own key after ours, and then everyone uses that one.
        raise StorageError(
            f"could not create a data key in Dify storage {self.namespace!r}: "
            f"{CURRENT_DATA_KEY!r} keeps disappearing; retry the call"
        )

    def _create_data_key(self) -> None:
        master = self._provider.current_key()
        key_id = self._new_key_id()
        record = _key_record(
            key_id,
            master.kek_id,
            _wrap_dek(master, self._tenant, new_data_key_bytes(), self._namespace_bytes, key_id),
        )
        # Its own name first, never overwritten: values sealed under it stay readable even
        # if another process's key wins the pointer.
        self._put(_data_key_name(key_id), record)
        self._put(CURRENT_DATA_KEY, record)

    def _new_key_id(self) -> int:
        for _ in range(_MAX_CREATE_ATTEMPTS):
            key_id = int.from_bytes(os.urandom(4), "big")
            if key_id != 0 and self._raw_exist(_data_key_name(key_id)) is False:
                return key_id
        raise StorageError(
            f"could not pick a free data key id in Dify storage {self.namespace!r}; retry the call"
        )

    def _data_key(self, key_id: int, for_key: str) -> DataKey:
        found = self._keys.get(key_id)
        if found is not None:
            return found
        name = _data_key_name(key_id)
        stored = self._fetch(name)
        if stored is None:
            # Fall back to the pointer's copy in case only the named copy was lost.
            stored = self._fetch(CURRENT_DATA_KEY)
            if stored is None or self._key_id_of(stored) != key_id:
                raise AuthenticationError(
                    f"{self._describe(for_key)} names data key {key_id:08x}, which is not in Dify's "
                    f"storage: the record was altered, or {name!r} was deleted (values sealed "
                    "under it cannot be recovered)"
                )
            name = CURRENT_DATA_KEY
        return self._open_key_record(stored, name, expected_id=key_id)

    @staticmethod
    def _key_id_of(blob: bytes) -> int | None:
        try:
            return _parse_key_record(blob)[0]
        except SecureKVError:
            return None

    def _open_key_record(self, blob: bytes, name: str, *, expected_id: int | None) -> DataKey:
        where = f"data key {name!r} of Dify storage {self.namespace!r}"
        try:
            key_id, kek_id, wrapped = _parse_key_record(blob)
        except UnsupportedVersionError as error:
            raise UnsupportedVersionError(f"{where}: {error}") from None
        except _LegacyFormatError as error:
            raise AuthenticationError(f"{where} {error}") from None
        except AuthenticationError:
            raise AuthenticationError(f"{where} failed authentication: it is malformed") from None
        if expected_id is not None and key_id != expected_id:
            raise AuthenticationError(f"{where} failed authentication: it holds another key")
        master = self._provider.find(kek_id)
        if master is None:
            held = ", ".join(key.kek_id for key in self._provider.all_keys())
            shown = kek_id if kek_id.isprintable() else repr(kek_id)  # read from storage: untrusted
            raise MasterKeyError(
                f"wrong master key: {where} is wrapped by master key {shown}, but the provider "
                f"holds only {held}; use that master key (or list it as a previous key)"
            )
        try:
            data_key = _unwrap_dek(master, self._tenant, wrapped, self._namespace_bytes, key_id)
        except UnsupportedVersionError as error:
            raise UnsupportedVersionError(f"{where}: {error}") from None
        except AuthenticationError:
            raise AuthenticationError(
                f"{where} failed authentication: it was altered, or written for another tenant "
                "(another tenant_secret) or namespace"
            ) from None
        if len(self._keys) >= _MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[key_id] = data_key
        return data_key

    # --- Records ------------------------------------------------------------------------

    def _open_record(self, key: str, blob: bytes) -> _Record:
        try:
            return _parse_record(blob)
        except UnsupportedVersionError as error:
            raise UnsupportedVersionError(f"{self._describe(key)}: {error}") from None
        except _LegacyFormatError as error:
            raise AuthenticationError(f"{self._describe(key)} {error}") from None
        except AuthenticationError:
            raise self._tampered(key) from None

    def _open_value(
        self, key: str, key_bytes: bytes, record: _Record, data_key: DataKey, header: Header
    ) -> bytes:
        context = _record_context(
            self._tenant, self._namespace_bytes, key_bytes, CATEGORY_CODES[record.category], record.expires_at
        )
        try:
            return open_value(data_key, context, record.sealed, header)
        except AuthenticationError:
            raise self._tampered(key) from None

    # --- Calls into the SDK -------------------------------------------------------------

    def _fetch(self, key: str) -> bytes | None:
        """The stored bytes, or ``None`` for a missing key, whichever way the SDK says so."""
        for attempt in range(2):
            try:
                raw = self._storage.get(key)
                break
            except SecureKVError:
                raise
            except Exception as error:
                # SDK 0.7.x and 0.10.x raise a bare Exception for a missing key, with the same
                # daemon message as for any other failed load: only exist() tells them apart. A key
                # that exists now may have been written between the two calls (another
                # process creating the data key): read it once more before calling it a failure.
                exists = self._raw_exist(key)
                if exists is False:
                    return None
                if exists is None or attempt == 1:
                    raise StorageError(
                        f"Dify storage could not read {self._describe(key)}: {_reason(error)}"
                    ) from None
        if raw is None:
            return None
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise StorageError(
                f"Dify storage returned {type(raw).__name__} for {self._describe(key)}, not bytes"
            )
        return bytes(raw)

    def _raw_exist(self, key: str) -> bool | None:
        """What the SDK's ``exist`` says; ``None`` if it failed too."""
        try:
            return bool(self._storage.exist(key))
        except SecureKVError:
            raise
        except Exception:
            return None

    def _put(self, key: str, blob: bytes) -> None:
        self._call(f"write {key!r} of Dify storage {self.namespace!r}", lambda: self._storage.set(key, blob))

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except SecureKVError:
            raise
        except Exception as error:
            raise StorageError(f"Dify storage could not {what}: {_reason(error)}") from None

    # --- Presentation -------------------------------------------------------------------

    def _describe(self, key: str) -> str:
        return f"record {key!r} of Dify storage {self.namespace!r}"

    def _tampered(self, key: str) -> AuthenticationError:
        return AuthenticationError(
            f"{self._describe(key)} failed authentication: the stored blob was altered, "
            "truncated or moved from another key, or is not a secure_kv record"
        )

    def __repr__(self) -> str:
        return f"<EncryptedStorage namespace={self.namespace!r} kek_id={self._provider.current_key().kek_id}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("EncryptedStorage holds key material and cannot be pickled")
