"""Settings: names and defaults of the design contract, clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from secure_kv import SecureStore
from secure_kv.errors import ConfigurationError
from secure_kv.keys.base import generate_master_key
from secure_kv.settings import load_settings


def test_defaults_match_the_design_contract() -> None:
    settings = load_settings()
    expected_dir = Path(platformdirs.user_data_dir("secure-kv", appauthor=False))
    assert settings.database_url == f"sqlite:///{expected_dir / 'store.db'}"
    assert settings.key_provider == "keyring"
    assert settings.max_value_bytes == 104857600
    assert settings.default_cache_ttl == 3600
    assert settings.sqlite_synchronous.value == "normal"
    assert settings.credential_policy.value == "warn"
    assert settings.audit_writes.value == "tokens"
    assert settings.dek_max_age_days == 90
    assert "@" in settings.actor


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURE_KV_MAX_VALUE_BYTES", "2048")
    monkeypatch.setenv("SECURE_KV_CREDENTIAL_POLICY", "reject")
    monkeypatch.setenv("SECURE_KV_SQLITE_SYNCHRONOUS", "full")
    settings = load_settings()
    assert settings.max_value_bytes == 2048
    assert settings.credential_policy.value == "reject"
    assert settings.sqlite_synchronous.value == "full"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SECURE_KV_KEY_PROVIDER", "no such provider"),
        ("SECURE_KV_PREVIOUS_KEY_PROVIDER", "bad/name"),
        ("SECURE_KV_MAX_VALUE_BYTES", "-1"),
        ("SECURE_KV_MAX_VALUE_BYTES", "lots"),
        ("SECURE_KV_DEFAULT_CACHE_TTL", "0"),
        ("SECURE_KV_DEFAULT_CACHE_TTL", "inf"),
        ("SECURE_KV_SQLITE_SYNCHRONOUS", "off"),
        ("SECURE_KV_CREDENTIAL_POLICY", "ignore"),
        ("SECURE_KV_AUDIT_WRITES", "some"),
        ("SECURE_KV_DEK_MAX_AGE_DAYS", "0"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_invalid_secret_setting_is_not_echoed(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", "leaky-secret-value")
    with pytest.raises(Exception) as caught:
        SecureStore.open(sqlite_url)
    assert "leaky-secret-value" not in str(caught.value)
    assert "SECURE_KV_MASTER_KEY" in str(caught.value)


def test_unknown_open_option_is_a_configuration_error(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        SecureStore.open(sqlite_url, colour="blue")


def test_open_options_override_settings(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    with SecureStore.open(sqlite_url, credential_policy="reject", actor="ops@example") as store:
        assert store.settings.credential_policy.value == "reject"
        assert store.settings.actor == "ops@example"


def test_from_settings_uses_url_and_provider_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", url)
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    with SecureStore.from_settings() as store:
        store.workspace("w").set("k", b"v")
    assert (tmp_path / "env.db").exists()
    with SecureStore.from_settings() as store:
        assert store.workspace("w").get("k") == b"v"


def test_file_provider_needs_a_path(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "file")
    with pytest.raises(ConfigurationError, match="SECURE_KV_MASTER_KEY_FILE"):
        SecureStore.open(sqlite_url)


def test_file_provider_from_settings(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(generate_master_key() + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "file")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY_FILE", str(key_file))
    with SecureStore.open(sqlite_url) as store:
        store.workspace("w").set("k", b"v")
        assert store.workspace("w").get("k") == b"v"


def test_settings_repr_never_shows_a_database_password() -> None:
    settings = load_settings(database_url="postgresql+psycopg://app:hunter2@db.example/kv")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_database_url_given_twice_is_a_configuration_error(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="first argument"):
        SecureStore.open(None, database_url=sqlite_url)
