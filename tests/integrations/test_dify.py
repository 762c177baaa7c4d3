"""The Dify integration, against the real ``dify_plugin`` SDK and an in-process daemon.

(a) A Workspace takes the place of ``self.session.storage`` in plugin code, unchanged.
(b) EncryptedStorage over the SDK's real StorageInvocation: Dify never holds or receives a
    plaintext value; categories and TTLs round-trip; tampering, swapping and a wrong master
    key are detected; racing processes never lose a data key.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from secure_kv import Category, SecureStore, Workspace
from secure_kv.errors import (
    AuthenticationError,
    InvalidInputError,
    InvalidTypeError,
    MasterKeyError,
    StorageError,
    UnsupportedVersionError,
)
from secure_kv.integrations import dify
from secure_kv.integrations.dify import (
    CURRENT_DATA_KEY,
    DEFAULT_MAX_VALUE_BYTES,
    RECORD_OVERHEAD,
    EncryptedStorage,
)
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.base import generate_master_key
from tests.conftest import IN_CI
from tests.dify_daemon import (
    LOAD_FAILED,
    MAX_LINE_BYTES,
    InMemoryDifyDaemon,
    StorageRequest,
    go_path_clean,
    import_sdk,
)

try:
    import_sdk()
except ImportError:  # pragma: no cover - depends on the environment
    if IN_CI:
        raise
    pytest.skip(
        "dify-plugin is not installed (it needs Python 3.11+): pip install 'secure-kv[dify]'",
        allow_module_level=True,
    )

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolRuntime
from dify_plugin.invocations.storage import StorageInvocation

DOCS = Path(__file__).resolve().parents[2] / "docs" / "dify.md"
VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS = json.loads((VECTORS_DIR / "dify_v2.json").read_text(encoding="utf-8"))
VECTORS_V1 = json.loads((VECTORS_DIR / "dify_v1.json").read_text(encoding="utf-8"))
T0 = 1_800_000_000 * 1_000_000  # a fixed "now", in microseconds
TENANT_SECRET = generate_master_key()  # a tenant's secret-input credential


@pytest.fixture
def raw_master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def master_key(raw_master_key: bytes) -> StaticMasterKey:
    return StaticMasterKey(raw_master_key)


@pytest.fixture
def daemon() -> Iterator[InMemoryDifyDaemon]:
    running = InMemoryDifyDaemon()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def session(daemon: InMemoryDifyDaemon) -> Any:
    """A real SDK session of one plugin process; ``session.storage`` is the SDK's own."""
    return daemon.connect()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set the wall clock EncryptedStorage sees, in seconds after T0."""
    now = [T0]
    monkeypatch.setattr(dify, "now_micros", lambda: now[0])

    def set_to(seconds: float) -> None:
        now[0] = T0 + round(seconds * 1_000_000)

    return set_to


@pytest.fixture
def storage(session: Any, master_key: StaticMasterKey) -> EncryptedStorage:
    return EncryptedStorage(session.storage, master_key=master_key, tenant_secret=TENANT_SECRET)


def _stored_bytes(daemon: InMemoryDifyDaemon) -> list[bytes]:
    return list(daemon.files.values())


# --- (a) A Workspace is a drop-in for self.session.storage -------------------------------


@pytest.mark.parametrize("method", ["set", "get", "delete", "exist"])
@pytest.mark.parametrize("ours", [Workspace, EncryptedStorage], ids=lambda c: c.__name__)
def test_every_call_the_sdk_storage_accepts_is_accepted(method: str, ours: type) -> None:
    sdk = list(inspect.signature(getattr(StorageInvocation, method)).parameters.values())
    mine = list(inspect.signature(getattr(ours, method)).parameters.values())
    positional = [p for p in mine if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == [p.name for p in sdk]
    extras = mine[len(positional) :]
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in extras)


class VisitCounter(Tool):  # type: ignore[misc]
    """A plugin tool written against self.session.storage, the way Dify's docs show."""

    def _invoke(self, tool_parameters: dict[str, Any]) -> Iterator[Any]:
        storage = self.session.storage
        key = f"visits/{tool_parameters['user']}"
        count = int(storage.get(key).decode()) + 1 if storage.exist(key) else 1
        storage.set(key, str(count).encode())
        if tool_parameters.get("forget"):
            storage.delete(key)
        yield self.create_text_message(f"{tool_parameters['user']}: {count}")


def _run_tool(session: Any, **parameters: Any) -> str:
    tool = VisitCounter(
        runtime=ToolRuntime(credentials={}, user_id="user-1", session_id=session.session_id), session=session
    )
    (message,) = tool.invoke(parameters)
    return str(message.message.text)


def _three_visits(session: Any) -> list[str]:
    return [
        _run_tool(session, user="ann"),
        _run_tool(session, user="ann"),
        _run_tool(session, user="ann", forget=True),
        _run_tool(session, user="ann"),
    ]


def test_plugin_code_runs_unchanged_on_a_workspace(
    daemon: InMemoryDifyDaemon, sqlite_store: SecureStore
) -> None:
    expected = ["ann: 1", "ann: 2", "ann: 3", "ann: 1"]
    assert _three_visits(daemon.connect()) == expected  # the SDK's own storage, as in Dify

    session = daemon.connect()
    session.storage = sqlite_store.workspace("tenant-1:acme/secrets-plugin")
    assert _three_visits(session) == expected
    assert session.storage.get("visits/ann") == b"1"


def test_plugin_code_runs_unchanged_on_encrypted_storage(
    daemon: InMemoryDifyDaemon, master_key: StaticMasterKey
) -> None:
    session = daemon.connect()
    session.storage = EncryptedStorage(session.storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    assert _three_visits(session) == ["ann: 1", "ann: 2", "ann: 3", "ann: 1"]
    assert daemon.stored("visits/ann") != b"1"


def test_missing_key_reads_as_none_where_the_sdk_raises(
    session: Any, sqlite_store: SecureStore, storage: EncryptedStorage
) -> None:
    with pytest.raises(Exception, match="load data failed"):  # SDK 0.7.x and 0.10.x: a bare Exception
        session.storage.get("missing")
    assert sqlite_store.workspace("w").get("missing") is None
    assert storage.get("missing") is None
    assert storage.exist("missing") is False


GEVENT_PLUGIN_PROCESS = textwrap.dedent(
    """
    import os, sys
    import dify_plugin  # as in a plugin process: gevent.monkey.patch_all() runs
    from gevent import monkey
    from secure_kv.integrations.dify import EncryptedStorage
    from secure_kv.keys import StaticMasterKey
    from tests.dify_daemon import running_daemon

    assert monkey.is_module_patched("threading")
    with running_daemon() as daemon:
        storage = EncryptedStorage(
            daemon.connect().storage, master_key=StaticMasterKey(os.urandom(32)), tenant_secret="t" * 32
        )
        storage.set("openai", b"sk-under-gevent", category="token")
        assert storage.get("openai") == b"sk-under-gevent"
        assert storage.get("missing") is None
        assert all(b"sk-under-gevent" not in value for value in daemon.files.values())
    print("ok")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, where gevent's patched locks print noise
    """
)


def test_it_works_in_a_plugin_process_patched_by_gevent() -> None:
    # This test process imports the SDK without its monkey patching (tests/dify_daemon.py);
    # a real plugin process has it, so run the same stack once that way.
    result = subprocess.run(
        [sys.executable, "-c", GEVENT_PLUGIN_PROCESS],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


# --- (b) EncryptedStorage: what reaches Dify --------------------------------------------


def test_nothing_dify_holds_or_receives_contains_a_plaintext(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    values = {
        "openai": (b"sk-live-0123456789abcdefghij", Category.TOKEN),
        "user/name": ("Jöhn Q. Plaintext".encode(), Category.PREFERENCE),
        "search:q": (b"<html>plaintext results</html>" * 20, Category.CACHE),
    }
    for key, (value, category) in values.items():
        storage.set(key, value, category=category)
    for key, (value, _) in values.items():
        assert storage.get(key) == value
        assert daemon.stored(key) != value
    dek = storage._current_key()._dek
    for value in [*(v for v, _ in values.values()), dek]:
        assert all(value not in stored for stored in _stored_bytes(daemon))
        assert all(value.hex() not in line for line in daemon.lines)  # the SDK sends hex


def test_dify_holds_the_data_key_wrapped_and_the_keys_by_name(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    storage.set("a", b"1")
    names = daemon.keys()
    assert CURRENT_DATA_KEY in names
    (own,) = [name for name in names if name.startswith("__secure_kv__/v2/dek-")]
    assert daemon.stored(own) == daemon.stored(CURRENT_DATA_KEY)
    assert names == sorted([CURRENT_DATA_KEY, own, "a"])  # key names are stored in plaintext
    assert len(daemon.stored("a")) == 1 + RECORD_OVERHEAD


@pytest.mark.parametrize("category", [*Category, "token", "preference", "cache"], ids=str)
def test_values_round_trip_in_every_category(storage: EncryptedStorage, category: Category | str) -> None:
    for value in (b"", b"v", os.urandom(70_000)):
        storage.set("k", value, category=category)
        assert storage.get("k") == value
        assert storage.exist("k")


def test_bytearray_and_memoryview_values_are_accepted(storage: EncryptedStorage) -> None:
    storage.set("a", bytearray(b"array"))
    storage.set("m", memoryview(b"view"))
    assert (storage.get("a"), storage.get("m")) == (b"array", b"view")


def test_a_second_process_reads_what_the_first_wrote(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, master_key: StaticMasterKey
) -> None:
    storage.set("shared", b"state", category=Category.TOKEN)
    other = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    assert other.get("shared") == b"state"
    other.set("back", b"reply")
    assert storage.get("back") == b"reply"
    assert len([name for name in daemon.keys() if name.startswith("__secure_kv__/v2/dek-")]) == 1


def test_delete_removes_and_deleting_twice_is_fine(session: Any, storage: EncryptedStorage) -> None:
    storage.set("k", b"v")
    storage.delete("k")
    assert storage.get("k") is None
    assert not storage.exist("k")
    with pytest.raises(Exception, match="delete data failed"):  # the daemon refuses it
        session.storage.delete("k")
    storage.delete("k")


# --- TTLs and categories --------------------------------------------------------------


def test_an_entry_reads_as_missing_from_its_expiry_on(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, clock: Callable[[float], None]
) -> None:
    clock(0)
    storage.set("short", b"v", ttl=10)
    storage.set("forever", b"v")
    clock(9.999999)
    assert storage.get("short") == b"v"
    assert storage.exist("short")
    clock(10)
    assert storage.get("short") is None
    assert not storage.exist("short")
    assert storage.get("forever") == b"v"
    # Left in Dify's storage: deleting it on read could delete a value written meanwhile.
    assert "short" in daemon.keys()


@pytest.mark.parametrize("category", list(Category), ids=str)
def test_ttl_is_allowed_on_every_category(
    storage: EncryptedStorage, clock: Callable[[float], None], category: Category
) -> None:
    clock(0)
    storage.set("k", b"v", category=category, ttl=timedelta(minutes=1))
    clock(59)
    assert storage.get("k") == b"v"
    clock(60)
    assert storage.get("k") is None


def test_a_cache_entry_always_expires(
    session: Any, master_key: StaticMasterKey, clock: Callable[[float], None]
) -> None:
    storage = EncryptedStorage(
        session.storage, master_key=master_key, tenant_secret=TENANT_SECRET, default_cache_ttl=30
    )
    clock(0)
    storage.set("c", b"v", category=Category.CACHE)
    clock(29)
    assert storage.get("c") == b"v"
    clock(30)
    assert storage.get("c") is None


def test_cache_ttl_defaults_to_the_setting(
    session: Any, master_key: StaticMasterKey, clock: Callable[[float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_DEFAULT_CACHE_TTL", "5")
    storage = EncryptedStorage(session.storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    clock(0)
    storage.set("c", b"v", category="cache")
    clock(5)
    assert storage.get("c") is None


def test_an_overwrite_without_ttl_clears_the_old_one(
    storage: EncryptedStorage, clock: Callable[[float], None]
) -> None:
    clock(0)
    storage.set("k", b"old", ttl=1)
    storage.set("k", b"new")
    clock(10**6)
    assert storage.get("k") == b"new"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"category": "secret"}, InvalidInputError),
        ({"category": 1}, InvalidTypeError),
        ({"ttl": 0}, InvalidInputError),
        ({"ttl": -1}, InvalidInputError),
        ({"ttl": float("nan")}, InvalidInputError),
        ({"ttl": True}, InvalidTypeError),
        ({"ttl": "60"}, InvalidTypeError),
    ],
)
def test_bad_categories_and_ttls_are_refused_before_anything_is_sent(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        storage.set("k", b"v", **options)
    assert daemon.requests == []


def test_values_of_the_wrong_type_are_refused(storage: EncryptedStorage) -> None:
    with pytest.raises(InvalidTypeError, match="encode"):
        storage.set("k", "text")  # type: ignore[arg-type]


# --- Tampering ------------------------------------------------------------------------


def _tamper(daemon: InMemoryDifyDaemon, key: str, change: Callable[[bytearray], Any]) -> None:
    blob = bytearray(daemon.stored(key))
    change(blob)
    daemon.replace(key, bytes(blob))


def _flip(offset: int) -> Callable[[bytearray], None]:
    def change(blob: bytearray) -> None:
        blob[offset] ^= 0x01

    return change


@pytest.mark.parametrize(
    "offset",
    [5, 6, 13, 14 + 2, 14 + 6, 14 + 22, 14 + 34, -1],
    ids=["category", "expiry-high", "expiry-low", "dek-id", "salt", "nonce", "ciphertext", "tag"],
)
def test_any_changed_byte_fails_authentication(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, offset: int
) -> None:
    storage.set("k", b"secret value", category=Category.TOKEN, ttl=3600)
    _tamper(daemon, "k", _flip(offset))
    with pytest.raises(AuthenticationError, match="'k'"):
        storage.get("k")


def test_a_truncated_or_foreign_blob_fails_authentication(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    storage.set("k", b"secret value")
    for cut in (0, 3, 13, 14 + 33, len(daemon.stored("k")) - 1):
        daemon.replace("k", daemon.stored("k")[:cut] if cut else b"")
        with pytest.raises(AuthenticationError):
            storage.get("k")
        storage.set("k", b"secret value")
    daemon.replace("k", b"plaintext written by other code")
    with pytest.raises(AuthenticationError, match="not a secure_kv record"):
        storage.get("k")
    assert storage.exist("k")  # something is stored; get says what is wrong with it


def test_blobs_swapped_between_keys_fail_authentication(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    storage.set("alice", b"alice's token", category=Category.TOKEN)
    storage.set("bob", b"bob's token", category=Category.TOKEN)
    alice, bob = daemon.stored("alice"), daemon.stored("bob")
    daemon.replace("alice", bob)
    daemon.replace("bob", alice)
    for key in ("alice", "bob"):
        with pytest.raises(AuthenticationError):
            storage.get(key)


def test_a_changed_category_or_later_expiry_fails_but_an_earlier_one_only_expires(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, clock: Callable[[float], None]
) -> None:
    clock(0)
    storage.set("k", b"v", category=Category.CACHE, ttl=60)
    original = daemon.stored("k")
    for category, expires_at in [(2, T0 + 60_000_000), (3, T0 + 120_000_000), (3, -1)]:
        daemon.replace("k", original[:5] + struct.pack(">Bq", category, expires_at) + original[14:])
        with pytest.raises(AuthenticationError):
            storage.get("k")
    daemon.replace("k", original[:6] + struct.pack(">q", T0) + original[14:])
    assert storage.get("k") is None  # like a delete: not detected (SECURITY.md)


def test_a_newer_record_format_is_refused_as_unsupported(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    storage.set("k", b"v")
    _tamper(daemon, "k", lambda blob: blob.__setitem__(4, 3))
    with pytest.raises(UnsupportedVersionError, match="newer secure_kv"):
        storage.get("k")


def test_a_blob_from_another_namespace_fails_authentication(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, master_key: StaticMasterKey
) -> None:
    storage.set("k", b"v")
    other = EncryptedStorage(
        daemon.connect().storage,
        master_key=master_key,
        tenant_secret=TENANT_SECRET,
        namespace="tenant-2:plugin",
    )
    with pytest.raises(AuthenticationError, match=r"another tenant .* or namespace"):
        other.get("k")


# --- Master keys and data keys ------------------------------------------------------


def test_a_wrong_master_key_is_a_master_key_error_not_tampering(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    storage.set("k", b"v", category=Category.TOKEN)
    wrong = StaticMasterKey(os.urandom(32))
    other = EncryptedStorage(daemon.connect().storage, master_key=wrong, tenant_secret=TENANT_SECRET)
    with pytest.raises(MasterKeyError, match=wrong.current_key().kek_id):
        other.get("k")
    with pytest.raises(MasterKeyError, match="wrong master key"):
        other.set("k2", b"v")
    assert "k2" not in daemon.keys()


def test_a_previous_master_key_still_opens_the_data_key(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, raw_master_key: bytes
) -> None:
    storage.set("k", b"v")
    rotated = StaticMasterKey(os.urandom(32), previous=[raw_master_key])
    other = EncryptedStorage(daemon.connect().storage, master_key=rotated, tenant_secret=TENANT_SECRET)
    assert other.get("k") == b"v"
    other.set("k2", b"v2")
    assert storage.get("k2") == b"v2"


def _data_key_names(daemon: InMemoryDifyDaemon) -> list[str]:
    return [name for name in daemon.keys() if name.startswith("__secure_kv__/v2/dek-")]


@pytest.mark.parametrize("where", ["wrapped", "key-id"])
def test_an_altered_data_key_fails_authentication(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, master_key: StaticMasterKey, where: str
) -> None:
    storage.set("k", b"v")
    offset = -1 if where == "wrapped" else 8
    for name in [*_data_key_names(daemon), CURRENT_DATA_KEY]:
        _tamper(daemon, name, _flip(offset))
    other = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    with pytest.raises(AuthenticationError):
        other.get("k")


def test_a_data_key_relabelled_with_another_kek_id_is_a_master_key_error(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, master_key: StaticMasterKey
) -> None:
    storage.set("k", b"v")
    for name in [*_data_key_names(daemon), CURRENT_DATA_KEY]:
        _tamper(daemon, name, lambda blob: blob.__setitem__(slice(10, 26), b"0" * 16))
    other = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    with pytest.raises(MasterKeyError, match="0000000000000000"):
        other.get("k")


def test_a_lost_named_data_key_is_found_through_the_pointer(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, master_key: StaticMasterKey
) -> None:
    storage.set("k", b"v")
    for name in _data_key_names(daemon):
        del daemon.files[daemon.path(name)]
    assert (
        EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET).get(
            "k"
        )
        == b"v"
    )


def test_a_deleted_data_key_is_reported_not_read_as_missing(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, master_key: StaticMasterKey
) -> None:
    storage.set("k", b"v")
    for name in [*_data_key_names(daemon), CURRENT_DATA_KEY]:
        del daemon.files[daemon.path(name)]
    other = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    with pytest.raises(AuthenticationError, match="cannot be recovered"):
        other.get("k")


# --- Two processes creating the data key at once ---------------------------------------


def test_processes_racing_to_create_the_data_key_lose_no_value(
    daemon: InMemoryDifyDaemon, master_key: StaticMasterKey
) -> None:
    # Both processes find no pointer before either writes one: both create a data key. The
    # SDK's get raises for a missing key and EncryptedStorage asks exist() to tell why, so the
    # two processes are held at that exist(), the last look before they write.
    barrier = threading.Barrier(2, timeout=60)
    reads = []

    def hold_first_two_pointer_reads(request: StorageRequest) -> None:
        if request.opt == "exist" and request.key == CURRENT_DATA_KEY and len(reads) < 2:
            reads.append(request)
            barrier.wait()

    daemon.before_request = hold_first_two_pointer_reads
    sessions = [daemon.connect(), daemon.connect()]
    errors: list[BaseException] = []

    def plugin_process(number: int) -> None:
        try:
            storage = EncryptedStorage(
                sessions[number].storage, master_key=master_key, tenant_secret=TENANT_SECRET
            )
            for round_ in range(3):
                storage.set(f"p{number}/{round_}", f"value {number}.{round_}".encode())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=plugin_process, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    daemon.before_request = None
    assert errors == []
    assert len(reads) == 2
    assert len(_data_key_names(daemon)) == 2  # both created one; both are kept
    reader = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    for number in (0, 1):
        for round_ in range(3):
            assert reader.get(f"p{number}/{round_}") == f"value {number}.{round_}".encode()


def test_a_writer_whose_data_key_lost_the_pointer_stays_readable(
    daemon: InMemoryDifyDaemon, master_key: StaticMasterKey
) -> None:
    first = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    first.set("one", b"1")
    # A second process that read no pointer (it raced the first) writes its own key.
    del daemon.files[daemon.path(CURRENT_DATA_KEY)]
    second = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    second.set("two", b"2")
    first.set("three", b"3")  # still under its own, now unpointed, data key
    keys = _data_key_names(daemon)
    assert len(keys) == 2
    assert daemon.stored(CURRENT_DATA_KEY) in {daemon.stored(name) for name in keys}
    later = EncryptedStorage(daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET)
    assert [later.get(key) for key in ("one", "two", "three")] == [b"1", b"2", b"3"]


# --- Dify's key rules, limits and errors ------------------------------------------------


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("a/", "clean path"),
        ("/a", "clean path"),
        ("a//b", "clean path"),
        ("./a", "clean path"),
        ("a/./b", "clean path"),
        (".", "clean path"),
        ("a/../b", r"'\.\.'"),
        ("a..b", r"'\.\.'"),
        ("a\\b", "backslash"),
        ("__secure_kv__/dek", "reserved"),
        ("__secure_kv__", "reserved"),
        ("__secure_kv__/dek-00000001", "reserved"),
        ("__secure_kv__/v2/dek", "reserved"),
        ("x" * 257, "at most 256"),
        ("", "empty"),
        ("a\x00b", "NUL"),
    ],
)
def test_keys_dify_would_refuse_alter_or_that_are_reserved_are_refused(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, key: str, rule: str
) -> None:
    for call in (
        lambda: storage.set(key, b"v"),
        lambda: storage.get(key),
        lambda: storage.exist(key),
        lambda: storage.delete(key),
    ):
        with pytest.raises(InvalidInputError, match=rule):
            call()
    assert daemon.requests == []


def test_the_refused_key_shapes_are_the_ones_the_daemon_merges() -> None:
    assert {go_path_clean(key) for key in ("a", "a/", "/a", "./a")} <= {"a", "/a"}
    assert go_path_clean("a//b") == go_path_clean("a/./b") == "a/b"


@pytest.mark.parametrize("key", ["user/42/pref", "名前", "a.b", ".hidden", "x" * 256, "k" + "é" * 127])
def test_keys_dify_takes_unchanged_are_stored_under_their_own_name(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage, key: str
) -> None:
    storage.set(key, b"v")
    assert storage.get(key) == b"v"
    assert key in daemon.keys()


def test_a_key_of_the_wrong_type_is_refused(storage: EncryptedStorage) -> None:
    with pytest.raises(InvalidTypeError):
        storage.get(42)  # type: ignore[arg-type]


def test_the_largest_value_fits_the_daemons_5_mib_line(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    key = "\x01" * 256  # JSON escapes each of these to 6 bytes: the longest request framing
    value = os.urandom(DEFAULT_MAX_VALUE_BYTES)
    storage.set(key, value)
    request = daemon.requests[-1]
    assert request.opt == "set"
    assert request.line_bytes + 1 <= MAX_LINE_BYTES
    assert storage.get(key) == value
    before = len(daemon.requests)
    with pytest.raises(InvalidInputError, match=str(DEFAULT_MAX_VALUE_BYTES)):
        storage.set("k", value + b"x")
    assert len(daemon.requests) == before


def test_max_value_bytes_can_be_set(session: Any, master_key: StaticMasterKey) -> None:
    storage = EncryptedStorage(
        session.storage, master_key=master_key, tenant_secret=TENANT_SECRET, max_value_bytes=10
    )
    storage.set("k", b"x" * 10)
    with pytest.raises(InvalidInputError):
        storage.set("k", b"x" * 11)


def test_a_read_that_fails_for_another_reason_is_a_storage_error(
    daemon: InMemoryDifyDaemon, storage: EncryptedStorage
) -> None:
    storage.set("k", b"v")
    daemon.fail_loads = True
    with pytest.raises(StorageError, match=LOAD_FAILED[:16]):
        storage.get("k")
    assert storage.get("missing") is None  # exist() still says it is missing


def test_a_write_over_the_plugins_quota_is_a_storage_error(master_key: StaticMasterKey) -> None:
    daemon = InMemoryDifyDaemon(quota_bytes=4096)
    try:
        storage = EncryptedStorage(
            daemon.connect().storage, master_key=master_key, tenant_secret=TENANT_SECRET
        )
        storage.set("small", b"v")
        with pytest.raises(StorageError, match="max storage size"):
            storage.set("big", b"x" * 4096)
    finally:
        daemon.close()


class DocumentedStorage:
    """Dify storage as its documentation describes it: ``get`` returns None when missing."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, val: bytes) -> None:
        self.data[key] = bytes(val)

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def exist(self, key: str) -> bool:
        return key in self.data


def test_an_sdk_whose_get_returns_none_works_too(master_key: StaticMasterKey) -> None:
    storage = EncryptedStorage(DocumentedStorage(), master_key=master_key, tenant_secret=TENANT_SECRET)
    assert storage.get("k") is None
    storage.set("k", b"v")
    assert storage.get("k") == b"v"


def test_something_that_is_not_a_storage_is_refused(master_key: StaticMasterKey) -> None:
    with pytest.raises(InvalidTypeError, match=r"self\.session\.storage"):
        EncryptedStorage(object(), master_key=master_key)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="StaticMasterKey"):
        EncryptedStorage(DocumentedStorage(), master_key=os.urandom(32))  # type: ignore[arg-type]


def test_the_master_key_comes_from_settings_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", base64.urlsafe_b64encode(raw).decode())
    storage = EncryptedStorage(DocumentedStorage(), tenant_secret=TENANT_SECRET)
    assert f"kek_id={StaticMasterKey(raw).current_key().kek_id}>" in repr(storage)


def test_it_shows_no_key_material_and_refuses_pickling(storage: EncryptedStorage) -> None:
    storage.set("k", b"sk-secret")
    assert "sk-secret" not in repr(storage)
    assert "kek_id=" in repr(storage)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(storage)


# --- The byte layouts, pinned by vectors (docs/dify.md) -------------------------------


def _hkdf(key: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDFExpand(algorithm=SHA256(), length=length, info=info).derive(key)


def test_the_data_key_vector_matches_the_written_spec() -> None:
    master = base64.urlsafe_b64decode(VECTORS["master_key"])
    secret = VECTORS["tenant_secret"].encode()
    tenant = HKDF(
        SHA256(), 64, salt=b"secure_kv/dify/v2/tenant", info=b"secure_kv/dify/v2/tenant-keys"
    ).derive(secret)
    assert (tenant[:32].hex(), tenant[32:].hex()) == (VECTORS["tenant_binding"], VECTORS["tenant_key"])
    record = bytes.fromhex(VECTORS["data_key"]["stored"])
    magic, version, key_id, kek_length = struct.unpack_from(">4sBIB", record)
    assert (magic, version, key_id) == (b"SKVK", 2, VECTORS["data_key"]["id"])
    assert (
        record[10 : 10 + kek_length].decode()
        == VECTORS["kek_id"]
        == _hkdf(master, b"secure_kv/v1/kek-id", 8).hex()
    )
    wrapped = record[10 + kek_length :]
    namespace = VECTORS["namespace"].encode()
    associated = (
        b"secure_kv/dify/v2/dek"
        + tenant[:32]
        + struct.pack(">H", len(namespace))
        + namespace
        + struct.pack(">I", key_id)
    )
    dek = AESGCM(_hkdf(master, b"secure_kv/v1/kek-wrap")).decrypt(wrapped[1:13], wrapped[13:], associated)
    assert wrapped[0] == 1
    assert dek.hex() == VECTORS["data_key"]["dek"]
    info = b"secure_kv/dify/v2/data-key" + struct.pack(">I", key_id)
    assert (
        HKDF(SHA256(), 32, salt=tenant[32:], info=info).derive(dek).hex() == VECTORS["data_key"]["data_key"]
    )
    assert VECTORS["data_key"]["name"] == f"__secure_kv__/v2/dek-{key_id:08x}"


@pytest.mark.parametrize("v", VECTORS["records"], ids=lambda v: v["key"])
def test_the_record_vectors_match_the_written_spec(v: dict[str, Any]) -> None:
    namespace, key = VECTORS["namespace"].encode(), v["key"].encode()
    code = {"token": 1, "preference": 2, "cache": 3}[v["category"]]
    salt, nonce = bytes.fromhex(v["salt"]), bytes.fromhex(v["nonce"])
    envelope_header = struct.pack(">BBI", 1, 1, VECTORS["data_key"]["id"]) + salt + nonce
    context = (
        b"secure_kv/dify/v2/record"
        + bytes.fromhex(VECTORS["tenant_binding"])
        + struct.pack(">H", len(namespace))
        + namespace
        + struct.pack(">H", len(key))
        + key
        + struct.pack(">Bq", code, v["expires_at"])
    )
    subkey = _hkdf(bytes.fromhex(VECTORS["data_key"]["data_key"]), b"secure_kv/v1/value-subkey" + salt)
    sealed = envelope_header + AESGCM(subkey).encrypt(
        nonce, bytes.fromhex(v["plaintext"]), envelope_header + context
    )
    expected = struct.pack(">4sBBq", b"SKVD", 2, code, v["expires_at"]) + sealed
    assert expected.hex() == v["stored"]


def _vector_storage(vectors: dict[str, Any], current_name: str) -> tuple[DocumentedStorage, EncryptedStorage]:
    plain = DocumentedStorage()
    stored_key = bytes.fromhex(vectors["data_key"]["stored"])
    plain.data[vectors["data_key"]["name"]] = plain.data[current_name] = stored_key
    for v in vectors["records"]:
        plain.data[v["key"]] = bytes.fromhex(v["stored"])
    provider = StaticMasterKey(base64.urlsafe_b64decode(vectors["master_key"]))
    storage = EncryptedStorage(
        plain, master_key=provider, tenant_secret=VECTORS["tenant_secret"], namespace=vectors["namespace"]
    )
    return plain, storage


@pytest.mark.parametrize("v", VECTORS["records"], ids=lambda v: v["key"])
def test_the_code_reads_and_writes_the_vectors(v: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dify, "now_micros", lambda: 1_700_000_000_000_000)
    _, storage = _vector_storage(VECTORS, CURRENT_DATA_KEY)
    assert storage.get(v["key"]) == bytes.fromhex(v["plaintext"])
    data_key = storage._data_key(VECTORS["data_key"]["id"], v["key"])
    expires_at = None if v["expires_at"] == -1 else v["expires_at"]
    written = dify._seal_record(
        data_key,
        storage._tenant,
        VECTORS["namespace"].encode(),
        v["key"].encode(),
        Category(v["category"]),
        expires_at,
        bytes.fromhex(v["plaintext"]),
        salt=bytes.fromhex(v["salt"]),
        nonce=bytes.fromhex(v["nonce"]),
    )
    assert written.hex() == v["stored"]


@pytest.mark.parametrize("v", VECTORS_V1["records"], ids=lambda v: v["key"])
def test_format_1_entries_are_refused_saying_they_bound_no_tenant(
    v: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Format 1 (tests/vectors/dify_v1.json) bound no tenant: a record of it may be another
    # tenant's, copied in. It is refused with a message that says so, never read.
    monkeypatch.setattr(dify, "now_micros", lambda: 1_700_000_000_000_000)
    plain, storage = _vector_storage(VECTORS_V1, "__secure_kv__/dek")
    assert storage.exist(v["key"])
    with pytest.raises(AuthenticationError, match=r"format 1 .*bound no tenant.*write the value again"):
        storage.get(v["key"])
    storage.set(v["key"], b"new")  # writing it again works, under a new format-2 data key
    assert storage.get(v["key"]) == b"new"
    assert plain.data["__secure_kv__/dek"] == bytes.fromhex(VECTORS_V1["data_key"]["stored"])  # left alone


def test_a_format_1_data_key_planted_under_a_format_2_name_is_refused() -> None:
    _, storage = _vector_storage(VECTORS_V1, CURRENT_DATA_KEY)
    with pytest.raises(AuthenticationError, match="format 1, which bound no tenant"):
        storage.set("k", b"v")


# --- docs/dify.md -----------------------------------------------------------------------


def _docs_example(tool_name: str) -> dict[str, Any]:
    """Run the docs' Python block that defines ``tool_name``; return what it defined."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    for block in blocks:
        if f"class {tool_name}(" in block:
            defined: dict[str, Any] = {}
            exec(compile(block, str(DOCS), "exec"), defined)
            return defined
    raise AssertionError(f"docs/dify.md has no example defining {tool_name}")


def _invoke(tool_class: type, session: Any, **parameters: Any) -> str:
    credentials = {"secure_kv_tenant_secret": TENANT_SECRET}
    runtime = ToolRuntime(credentials=credentials, user_id="user-1", session_id=session.session_id)
    (message,) = tool_class(runtime=runtime, session=session).invoke(parameters)
    return str(message.message.text)


def test_the_docs_encrypted_storage_example_runs(
    daemon: InMemoryDifyDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    example = _docs_example("RememberTokenTool")
    assert _invoke(example["RememberTokenTool"], daemon.connect(), token="sk-docs-0123") == "token stored"
    assert {"tokens/user-1", "prefs/user-1/lang", "cache/user-1/search"} <= set(daemon.keys())
    assert all(b"sk-docs-0123" not in stored for stored in _stored_bytes(daemon))


def test_the_docs_workspace_example_runs(
    daemon: InMemoryDifyDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", f"sqlite:///{tmp_path / 'plugin.db'}")
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    example = _docs_example("NotesTool")
    try:
        assert _invoke(example["NotesTool"], daemon.connect(), text="hello", token="sk-x") == "hello"
        assert example["secure_store"]().workspace("notes-plugin").get("api_token") == b"sk-x"
    finally:
        example["secure_store"]().close()
    assert daemon.requests == []  # nothing went to Dify's storage


# --- The tenant secret ------------------------------------------------------------------


def test_the_tenant_secret_may_be_bytes_or_text_with_surrounding_whitespace(
    master_key: StaticMasterKey,
) -> None:
    plain = DocumentedStorage()
    EncryptedStorage(plain, master_key=master_key, tenant_secret=f"  {TENANT_SECRET}\n").set("k", b"v")
    same = EncryptedStorage(plain, master_key=master_key, tenant_secret=TENANT_SECRET.encode())
    assert same.get("k") == b"v"


def test_a_tenant_secret_of_the_wrong_type_is_refused_without_echoing_it(master_key: StaticMasterKey) -> None:
    with pytest.raises(InvalidTypeError, match="tenant_secret must be str or bytes") as raised:
        EncryptedStorage(DocumentedStorage(), master_key=master_key, tenant_secret=12345678901234567890)  # type: ignore[arg-type]
    assert "12345678901234567890" not in str(raised.value)
