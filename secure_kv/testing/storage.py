"""Tests every plugin storage must pass: the behaviour a Dify plugin relies on.

A :class:`~secure_kv.store.Workspace` and :class:`~secure_kv.integrations.dify.EncryptedStorage`
both stand where a plugin expects ``self.session.storage``; so can a storage of your own.
Subclass :class:`PluginStorageContract` (name it ``Test...``), override the ``make_storage``
fixture and set the documented class attributes; pytest collects the inherited tests::

    import pytest
    from secure_kv.testing.storage import PluginStorageContract

    class TestMyStorage(PluginStorageContract):
        default_max_value_bytes = 1024 * 1024

        @pytest.fixture
        def make_storage(self, tmp_path):
            def make(*, credential_policy="warn", max_value_bytes=None, default_cache_ttl=None):
                return MyStorage(tmp_path, credential_policy=credential_policy, ...)
            return make

Expiry is tested under a controlled wall clock, not with sleeps: the ``clock`` fixture
replaces :func:`time.time_ns` and :func:`time.time` (what secure_kv reads) and only moves
forward. A storage that reads the time another way overrides ``clock``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, Protocol

import pytest

from secure_kv.categories import Category
from secure_kv.errors import ConfigurationError, InvalidInputError, InvalidTypeError

__all__ = ["ContractClock", "PluginStorageContract", "StorageFactory"]

# A GitHub personal access token's shape: every credential policy recognises it.
CREDENTIAL_LIKE = b"ghp_" + b"Zq7Xw2Lk9Pm4Rt6Yv8Bn3Cd5Fg1Hj0Ks2Ml4N"


class StorageFactory(Protocol):
    """Makes the storage under test; ``None`` means "the storage's default"."""

    def __call__(
        self,
        *,
        credential_policy: str = "warn",
        max_value_bytes: int | None = None,
        default_cache_ttl: float | None = None,
    ) -> Any: ...


class ContractClock:
    """The wall clock the storage sees, frozen at the real time and moved on by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._now_ns = time.time_ns()
        monkeypatch.setattr(time, "time_ns", lambda: self._now_ns)
        monkeypatch.setattr(time, "time", lambda: self._now_ns / 1e9)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        assert seconds >= 0, "the clock only moves forward"
        self._now_ns += round(seconds * 1e9)


class PluginStorageContract:
    """The behaviour of Dify's plugin-storage interface: ``set``/``get``/``delete``/``exist``.

    Intended differences between storages are these class attributes; anything else that
    differs between two storages is a bug in one of them.
    """

    #: The largest value accepted when ``max_value_bytes`` is not given (a Workspace:
    #: ``SECURE_KV_MAX_VALUE_BYTES``, 100 MiB; Dify: what fits one request to its daemon).
    default_max_value_bytes: int = 100 * 1024 * 1024
    #: Keys valid for secure_kv (1-256 bytes of UTF-8, no NUL) that this storage refuses
    #: anyway with :class:`InvalidInputError` (Dify: path traversal, unclean paths, its
    #: reserved prefix).
    extra_refused_keys: tuple[str, ...] = ()

    # --- What a subclass provides -------------------------------------------------------

    @pytest.fixture
    def make_storage(self) -> StorageFactory:
        """Override: a factory of empty storages, all views of one backing store."""
        raise NotImplementedError("override the make_storage fixture")

    def stored_category(self, storage: Any, key: str) -> Category:
        """Override to check the credential policy's ``promote``: the category ``key`` is stored under."""
        pytest.skip("this storage does not say which category it stored")

    # --- Fixtures -------------------------------------------------------------------------

    @pytest.fixture
    def storage(self, make_storage: StorageFactory) -> Any:
        return make_storage()

    @pytest.fixture
    def clock(self, monkeypatch: pytest.MonkeyPatch) -> ContractClock:
        return ContractClock(monkeypatch)

    # --- The four calls -------------------------------------------------------------------

    def test_set_then_get_returns_the_value(self, storage: Any) -> None:
        kinds: tuple[Callable[[bytes], Any], ...] = (bytes, bytearray, memoryview)
        for kind in kinds:
            storage.set(f"greeting-{kind.__name__}", kind(b"hello \x00 world"))
        for kind in kinds:
            assert storage.get(f"greeting-{kind.__name__}") == b"hello \x00 world"
            assert type(storage.get(f"greeting-{kind.__name__}")) is bytes

    def test_an_empty_value_round_trips(self, storage: Any) -> None:
        storage.set("empty", b"")
        assert storage.get("empty") == b""
        assert storage.exist("empty") is True

    def test_a_missing_key_reads_as_none(self, storage: Any) -> None:
        assert storage.get("never-written") is None
        assert storage.exist("never-written") is False

    def test_exist_tells_a_present_key_from_a_missing_one(self, storage: Any) -> None:
        storage.set("here", b"v")
        assert storage.exist("here") is True
        assert storage.exist("there") is False

    def test_set_replaces_the_previous_value(self, storage: Any) -> None:
        storage.set("k", b"first")
        storage.set("k", b"second")
        assert storage.get("k") == b"second"

    def test_delete_removes_the_value(self, storage: Any) -> None:
        storage.set("k", b"v")
        storage.set("other", b"kept")
        assert storage.delete("k") is None
        assert storage.get("k") is None
        assert storage.exist("k") is False
        assert storage.get("other") == b"kept"

    def test_deleting_a_missing_key_is_fine(self, storage: Any) -> None:
        storage.delete("never-written")
        storage.set("k", b"v")
        storage.delete("k")
        storage.delete("k")
        assert storage.get("k") is None

    def test_keys_are_distinct(self, storage: Any) -> None:
        for key in ("a", "A", "a/b", "a b", "ä"):
            storage.set(key, key.encode())
        for key in ("a", "A", "a/b", "a b", "ä"):
            assert storage.get(key) == key.encode()

    def test_keys_of_one_to_256_bytes_of_utf8_are_accepted(self, storage: Any) -> None:
        for key in ("k", "k" * 256, "é" * 128, "tokens/user-1/openai", "ключ", "with space", "emoji-\N{KEY}"):
            storage.set(key, b"v")
            assert storage.get(key) == b"v", key
            assert storage.exist(key) is True
            storage.delete(key)
            assert storage.exist(key) is False

    # --- Categories -----------------------------------------------------------------------

    def test_every_category_round_trips_as_enum_or_plain_string(self, storage: Any) -> None:
        categories: list[Category | str] = [*Category, "token", "preference", "cache"]
        for index, category in enumerate(categories):
            storage.set(f"k{index}", f"value {index}".encode(), category=category)
        for index in range(len(categories)):
            assert storage.get(f"k{index}") == f"value {index}".encode()
            assert storage.exist(f"k{index}") is True

    def test_an_unknown_category_is_refused(self, storage: Any) -> None:
        for category in ("secret", "TOKEN", "", " token"):
            with pytest.raises(InvalidInputError):
                storage.set("k", b"v", category=category)
        assert storage.exist("k") is False

    def test_a_category_of_another_type_is_a_type_error(self, storage: Any) -> None:
        for category in (1, None, b"token"):
            with pytest.raises(InvalidTypeError) as raised:
                storage.set("k", b"v", category=category)
            assert isinstance(raised.value, TypeError)
        assert storage.exist("k") is False

    # --- Expiry ---------------------------------------------------------------------------

    def test_a_value_expires_after_its_ttl(self, make_storage: StorageFactory, clock: ContractClock) -> None:
        storage = make_storage()
        storage.set("short", b"v", ttl=10)
        storage.set("long", b"v", ttl=3600)
        clock.advance(9.9)
        assert storage.get("short") == b"v"
        assert storage.exist("short") is True
        clock.advance(0.1)
        assert storage.get("short") is None
        assert storage.exist("short") is False
        assert storage.get("long") == b"v"

    def test_every_category_may_have_a_ttl(self, make_storage: StorageFactory, clock: ContractClock) -> None:
        storage = make_storage()
        for category in Category:
            storage.set(category.value, b"v", category=category, ttl=timedelta(seconds=30))
        clock.advance(29)
        assert all(storage.get(category.value) == b"v" for category in Category)
        clock.advance(1)
        assert all(storage.get(category.value) is None for category in Category)

    def test_a_fractional_ttl_is_kept(self, make_storage: StorageFactory, clock: ContractClock) -> None:
        storage = make_storage()
        storage.set("k", b"v", ttl=0.5)
        clock.advance(0.4)
        assert storage.get("k") == b"v"
        clock.advance(0.1)
        assert storage.get("k") is None

    def test_a_cache_entry_always_expires(self, make_storage: StorageFactory, clock: ContractClock) -> None:
        storage = make_storage(default_cache_ttl=60)
        storage.set("cached", b"v", category=Category.CACHE)
        storage.set("pref", b"v")
        clock.advance(59)
        assert storage.get("cached") == b"v"
        clock.advance(1)
        assert storage.get("cached") is None
        assert storage.get("pref") == b"v"

    def test_a_cache_entry_expires_after_an_hour_by_default(
        self, make_storage: StorageFactory, clock: ContractClock
    ) -> None:
        storage = make_storage()
        storage.set("cached", b"v", category="cache")
        clock.advance(3599)
        assert storage.exist("cached") is True
        clock.advance(1)
        assert storage.exist("cached") is False

    def test_a_cache_entry_takes_its_own_ttl(
        self, make_storage: StorageFactory, clock: ContractClock
    ) -> None:
        storage = make_storage(default_cache_ttl=60)
        storage.set("cached", b"v", category=Category.CACHE, ttl=600)
        clock.advance(599)
        assert storage.get("cached") == b"v"
        clock.advance(1)
        assert storage.get("cached") is None

    def test_an_overwrite_without_ttl_clears_the_old_one(
        self, make_storage: StorageFactory, clock: ContractClock
    ) -> None:
        storage = make_storage()
        storage.set("k", b"old", ttl=10)
        storage.set("k", b"new")
        clock.advance(10 * 365 * 24 * 3600)
        assert storage.get("k") == b"new"

    def test_an_overwrite_with_a_ttl_replaces_the_old_one(
        self, make_storage: StorageFactory, clock: ContractClock
    ) -> None:
        storage = make_storage()
        storage.set("k", b"old", ttl=10)
        storage.set("k", b"new", ttl=100)
        clock.advance(50)
        assert storage.get("k") == b"new"
        clock.advance(50)
        assert storage.get("k") is None

    def test_an_expired_key_can_be_written_and_deleted(
        self, make_storage: StorageFactory, clock: ContractClock
    ) -> None:
        storage = make_storage()
        storage.set("k", b"old", ttl=1)
        clock.advance(1)
        storage.delete("k")
        storage.set("k", b"new")
        assert storage.get("k") == b"new"

    def test_a_ttl_that_is_not_positive_and_finite_is_refused(self, storage: Any) -> None:
        storage.set("k", b"kept")
        bad: tuple[object, ...] = (0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, timedelta(0))
        for ttl in (*bad, timedelta(seconds=-1), 10**30, 1e300):
            with pytest.raises(InvalidInputError):
                storage.set("k", b"new", ttl=ttl)
        assert storage.get("k") == b"kept"

    def test_a_ttl_of_another_type_or_a_bool_is_a_type_error(self, storage: Any) -> None:
        for ttl in (True, False, "60", b"60", [60]):
            with pytest.raises(InvalidTypeError) as raised:
                storage.set("k", b"v", ttl=ttl)
            assert isinstance(raised.value, TypeError)
        assert storage.exist("k") is False

    # --- The credential policy (SECURE_KV_CREDENTIAL_POLICY) ------------------------------

    def test_warn_stores_a_credential_like_preference_and_logs_the_rule_only(
        self, make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        storage = make_storage(credential_policy="warn")
        with caplog.at_level(logging.INFO, logger="secure_kv"):
            storage.set("api", CREDENTIAL_LIKE)
        assert storage.get("api") == CREDENTIAL_LIKE
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "looks like a credential" in warnings[0].getMessage()
        assert CREDENTIAL_LIKE.decode() not in caplog.text
        assert self.stored_category(storage, "api") is Category.PREFERENCE

    def test_promote_stores_a_credential_like_value_as_a_token(
        self, make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        storage = make_storage(credential_policy="promote")
        with caplog.at_level(logging.INFO, logger="secure_kv"):
            storage.set("api", CREDENTIAL_LIKE, category="cache", ttl=60)
        assert storage.get("api") == CREDENTIAL_LIKE
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert CREDENTIAL_LIKE.decode() not in caplog.text
        assert self.stored_category(storage, "api") is Category.TOKEN

    def test_reject_refuses_a_credential_like_value_and_stores_nothing(
        self, make_storage: StorageFactory
    ) -> None:
        storage = make_storage(credential_policy="reject")
        storage.set("api", b"an ordinary preference")
        with pytest.raises(InvalidInputError) as raised:
            storage.set("api", CREDENTIAL_LIKE)
        assert "Category.TOKEN" in str(raised.value)
        assert CREDENTIAL_LIKE.decode() not in str(raised.value)
        assert storage.get("api") == b"an ordinary preference"

    def test_a_token_is_stored_under_every_policy_without_a_log(
        self, make_storage: StorageFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        for policy in ("warn", "promote", "reject"):
            storage = make_storage(credential_policy=policy)
            with caplog.at_level(logging.INFO, logger="secure_kv"):
                storage.set(f"api-{policy}", CREDENTIAL_LIKE, category=Category.TOKEN)
                storage.set(f"note-{policy}", b"call Anna about the handover")
            assert storage.get(f"api-{policy}") == CREDENTIAL_LIKE
            assert storage.get(f"note-{policy}") == b"call Anna about the handover"
        assert not [r for r in caplog.records if "credential" in r.getMessage()]

    def test_an_unknown_policy_is_a_configuration_error(self, make_storage: StorageFactory) -> None:
        with pytest.raises(ConfigurationError):
            make_storage(credential_policy="ignore")

    # --- Bad input ------------------------------------------------------------------------

    @staticmethod
    def _every_call(storage: Any, key: object) -> Iterator[Callable[[], object]]:
        yield lambda: storage.set(key, b"v")
        yield lambda: storage.get(key)
        yield lambda: storage.delete(key)
        yield lambda: storage.exist(key)

    def test_a_key_of_another_type_is_a_type_error_on_every_call(self, storage: Any) -> None:
        for key in (1, None, b"k", ["k"]):
            for call in self._every_call(storage, key):
                with pytest.raises(InvalidTypeError) as raised:
                    call()
                assert isinstance(raised.value, TypeError)

    def test_an_empty_oversize_or_nul_key_is_refused_on_every_call(self, storage: Any) -> None:
        for key in ("", "k" * 257, "é" * 129, "a\x00b"):
            for call in self._every_call(storage, key):
                with pytest.raises(InvalidInputError):
                    call()

    def test_the_storage_specific_keys_are_refused_on_every_call(self, storage: Any) -> None:
        for key in self.extra_refused_keys:
            for call in self._every_call(storage, key):
                with pytest.raises(InvalidInputError):
                    call()

    def test_a_value_of_another_type_is_a_type_error(self, storage: Any) -> None:
        for value in ("text", 1, None, [b"v"]):
            with pytest.raises(InvalidTypeError) as raised:
                storage.set("k", value)
            assert isinstance(raised.value, TypeError)
        assert storage.exist("k") is False

    def test_a_value_over_max_value_bytes_is_refused_and_the_old_one_kept(
        self, make_storage: StorageFactory
    ) -> None:
        storage = make_storage(max_value_bytes=1024)
        storage.set("k", b"x" * 1024)
        with pytest.raises(InvalidInputError):
            storage.set("k", b"y" * 1025)
        assert storage.get("k") == b"x" * 1024

    def test_the_default_value_limit_is_the_documented_one(self, storage: Any) -> None:
        with pytest.raises(InvalidInputError) as raised:
            storage.set("k", bytes(self.default_max_value_bytes + 1))
        assert str(self.default_max_value_bytes) in str(raised.value)
        assert storage.exist("k") is False
