"""Settings: one typed class read from ``SECURE_KV_*`` environment variables.

``SecureStore.open(url, **options)`` and the CLI read the same class, so a setting means
the same thing everywhere. Invalid values raise :class:`ConfigurationError` naming the
variable, never echoing a secret one.
"""

from __future__ import annotations

import getpass
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import platformdirs
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from secure_kv._env_keys import CURRENT_VARIABLE, environment_keys
from secure_kv.errors import ConfigurationError

__all__ = ["CredentialPolicy", "Settings", "default_database_url", "load_settings"]

ENV_PREFIX = "SECURE_KV_"
_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
APP_NAME = "secure-kv"


class KeyProviderName(StrEnum):
    """The built-in providers; any name registered under the entry-point group
    ``secure_kv.key_providers`` is accepted too (see ``secure_kv.keys.registry``)."""

    KEYRING = "keyring"
    ENV = "env"
    FILE = "file"
    PKCS11 = "pkcs11"
    AWS_KMS = "aws-kms"


class CredentialPolicy(StrEnum):
    """What happens to a credential-looking value stored under a non-token category."""

    WARN = "warn"
    PROMOTE = "promote"
    REJECT = "reject"


class AuditWrites(StrEnum):
    TOKENS = "tokens"
    ALL = "all"


class SqliteSynchronous(StrEnum):
    NORMAL = "normal"
    FULL = "full"


def default_database_url() -> str:
    """SQLite file ``store.db`` in the user's data directory (created on first open)."""
    path = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "store.db"
    return f"sqlite:///{path}"


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Settings(BaseSettings):
    """Every ``SECURE_KV_*`` setting, with the defaults of the design contract."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,
    )

    # Left out of the repr: a URL may carry a database password.
    database_url: str = Field(default_factory=default_database_url, repr=False)
    # A registered provider's name; whether it exists is checked when the provider is made.
    key_provider: str = KeyProviderName.KEYRING.value
    previous_key_provider: str | None = None
    # Secrets are SecretStr so they never show in a repr or a validation error.
    master_key: SecretStr | None = None
    previous_master_keys: SecretStr | None = None
    master_key_file: Path | None = None
    pkcs11_module: Path | None = None
    pkcs11_token_label: str | None = None
    pkcs11_key_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    pkcs11_pin_file: Path | None = None
    aws_kms_key_id: str | None = None
    max_value_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    default_cache_ttl: float = Field(default=3600, gt=0, allow_inf_nan=False)
    sqlite_synchronous: SqliteSynchronous = SqliteSynchronous.NORMAL
    credential_policy: CredentialPolicy = CredentialPolicy.WARN
    audit_writes: AuditWrites = AuditWrites.TOKENS
    actor: str = Field(default_factory=default_actor, min_length=1)
    dek_max_age_days: float = Field(default=90, gt=0, allow_inf_nan=False)
    # How long a process trusts its cached copy of a workspace's current data key. After a
    # rotation every process moves its writes to the new key within this many seconds.
    dek_cache_seconds: float = Field(default=60, gt=0, allow_inf_nan=False)
    # How many unwrapped data keys one process keeps in memory at most.
    dek_cache_size: int = Field(default=1024, gt=0)

    @field_validator("key_provider", "previous_key_provider")
    @classmethod
    def _provider_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        name = value.strip().lower()
        if not name and info.field_name == "previous_key_provider":
            return None
        if not _PROVIDER_NAME.fullmatch(name):
            raise ValueError("must be a provider name such as keyring, env, file, pkcs11 or aws-kms")
        return name

    @model_validator(mode="after")
    def _env_key_means_env_provider(self) -> Settings:
        """``SECURE_KV_MASTER_KEY`` set and no provider named: the env provider (the key
        given is the key meant). A provider named explicitly always wins.
        """
        if "key_provider" not in self.model_fields_set and (
            self.master_key is not None or environment_keys().get(CURRENT_VARIABLE, "").strip()
        ):
            # environment_keys(): the env provider may have taken the key out of os.environ.
            self.key_provider = KeyProviderName.ENV.value
        return self

    def __reduce__(self) -> NoReturn:
        # SecretStr pickles with its value: a pickled Settings would carry the master key
        # (and a database password) into a cache, a queue or another process.
        raise TypeError("Settings hold secrets (the master key, database URL) and cannot be pickled")

    @field_validator("database_url")
    @classmethod
    def _url_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        name = ENV_PREFIX + "_".join(str(p) for p in item["loc"]).upper()
        parts.append(f"{name}: {item['msg']}")
    return "; ".join(parts)


def refuse_password_in_argument(url: str) -> None:
    """Refuse a ``--database-url`` holding a password: the process list and shell history
    would show it to every local user. The URL is not echoed."""
    try:
        parsed = make_url(url)
    except Exception:  # not a URL: the store says so when it opens it
        return
    if parsed.password is not None or any(name.lower() in ("password", "passwd") for name in parsed.query):
        raise ConfigurationError(
            "--database-url holds a password, which `ps` and shell history show to others: "
            "set SECURE_KV_DATABASE_URL instead, or leave the password out of the URL and use "
            "the driver's password file (PostgreSQL ~/.pgpass, MySQL ~/.my.cnf)"
        )


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, with keyword overrides taking precedence.

    Overrides equal to ``None`` are ignored, so callers can pass optional arguments through.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)}: valid options are "
            f"{', '.join(sorted(Settings.model_fields))}"
        )
    try:
        return Settings(**given)
    except ValidationError as error:
        raise ConfigurationError(f"invalid setting: {_describe(error)}") from None
