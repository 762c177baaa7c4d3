"""Admin operations as plain typed functions; ``cli.py`` is a thin layer over them.

Everything the CLI does is scriptable from Python and testable without a subprocess.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .categories import Category
from .database import Database, safe_url
from .datakeys import check_master_key
from .errors import AuthenticationError
from .keys import KeyringMasterKey, MasterKeyProvider, StaticMasterKey, provider_from_settings
from .keys.base import generate_master_key
from .migrate import head_revision, upgrade_schema
from .settings import Settings, load_settings
from .store import SecureStore

__all__ = ["DemoReport", "InitReport", "demo", "init", "keygen"]


def keygen() -> str:
    """A new random master key: url-safe base64 of 32 bytes."""
    return generate_master_key()


@dataclass(frozen=True)
class InitReport:
    """What :func:`init` found and did."""

    database: str
    revision_before: str | None
    revision_now: str
    kek_id: str
    created_master_key: bool

    @property
    def changed_schema(self) -> bool:
        return self.revision_before != self.revision_now


def init(settings: Settings | None = None, master_key: MasterKeyProvider | None = None) -> InitReport:
    """Create or upgrade the schema (idempotent); with the keyring provider, make the
    master key if there is none yet. Checks the master key against the store's data keys.
    """
    settings = settings if settings is not None else load_settings()
    provider = master_key if master_key is not None else provider_from_settings(settings, create=True)
    database = Database(settings.database_url, settings)
    try:
        before = upgrade_schema(database)
        check_master_key(database, provider)
    finally:
        database.close()
    return InitReport(
        database=safe_url(database.url),
        revision_before=before,
        revision_now=head_revision(),
        kek_id=provider.current_key().kek_id,
        created_master_key=isinstance(provider, KeyringMasterKey) and provider.created,
    )


@dataclass
class DemoReport:
    """What :func:`demo` showed, step by step."""

    database: str
    kek_id: str
    read_back: dict[str, bytes] = field(default_factory=dict)
    stored_row_prefix: str = ""
    plaintext_in_file: bool = True
    tamper_detected: bool = False
    tamper_error: str = ""


DEMO_VALUES = {
    "openai": (b"sk-demo-0123456789abcdefghijklmnop", Category.TOKEN, None),
    "user_name": (b"John", Category.PREFERENCE, None),
    "search:weather": (b'{"answer": "sunny"}', Category.CACHE, 300),
}


def demo(directory: str | os.PathLike[str] | None = None) -> DemoReport:
    """Run the main job end to end on a throwaway SQLite store under ``directory``.

    Stores a token, a preference and a cache entry, reads them back, checks that the
    database file holds no plaintext, then flips one byte of a stored record and shows
    that reading it fails authentication.
    """
    with tempfile.TemporaryDirectory(dir=directory, prefix="secure-kv-demo-") as tmp:
        path = Path(tmp) / "demo.db"
        url = f"sqlite:///{path}"
        provider = StaticMasterKey(os.urandom(32))
        with SecureStore.open(url, master_key=provider) as store:
            report = DemoReport(database=url, kek_id=store.kek_id)
            ws = store.workspace("tenant-42:demo-plugin")
            for key, (value, category, ttl) in DEMO_VALUES.items():
                ws.set(key, value, category=category, ttl=ttl)
            for key in DEMO_VALUES:
                found = ws.get(key)
                assert found is not None
                report.read_back[key] = found

            with sqlite3.connect(path) as raw:
                (blob,) = raw.execute(
                    "SELECT value FROM skv_records WHERE record_key = ?", (b"openai",)
                ).fetchone()
                report.stored_row_prefix = bytes(blob[:24]).hex()
                raw.execute("PRAGMA wal_checkpoint(FULL)")
            contents = b"".join(p.read_bytes() for p in Path(tmp).iterdir() if p.name.startswith("demo.db"))
            report.plaintext_in_file = any(value in contents for value, _, _ in DEMO_VALUES.values())

            tampered = bytearray(blob)
            tampered[-1] ^= 0x01
            with sqlite3.connect(path) as raw:
                raw.execute(
                    "UPDATE skv_records SET value = ? WHERE record_key = ?", (bytes(tampered), b"openai")
                )
            try:
                ws.get("openai")
            except AuthenticationError as error:
                report.tamper_detected = True
                report.tamper_error = str(error)
        return report
