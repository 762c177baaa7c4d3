"""Docs that run: every Python block in README.md and docs/*.md is executed by pytest (sybil).

Blocks of one document share a namespace and run in order, in a temporary directory, with
a fresh master key in ``SECURE_KV_MASTER_KEY`` and ``SECURE_KV_DATABASE_URL`` naming a
SQLite file there. Blocks written for a Dify plugin's ``_invoke`` (``self.runtime``,
``self.session``) run too: ``self`` is a tool's view of a real dify-plugin SDK session over
the tests' in-process daemon (tests/dify_daemon.py). A block that cannot run here is marked
in the Markdown with ``<!-- skip: next -->`` and a comment saying why. Shell blocks are run
by tests/docs/test_cli_docs.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from secure_kv.keys.base import generate_master_key


@pytest.fixture
def docs_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary working directory, a master key and a SQLite store URL, and nothing else."""
    from secure_kv.keys.env import forget_environment_keys

    for name in [name for name in os.environ if name.startswith("SECURE_KV_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", f"sqlite:///{tmp_path / 'docs.db'}")
    try:
        yield tmp_path
    finally:
        forget_environment_keys()


@pytest.fixture(name="self")
def plugin_tool() -> Iterator[Any]:
    """What ``self`` is inside a Dify tool's ``_invoke``: its runtime credentials and a real
    SDK session (``self.session.storage`` is the SDK's StorageInvocation)."""
    from tests.dify_daemon import InMemoryDifyDaemon, import_sdk

    try:
        import_sdk()
    except ImportError:  # pragma: no cover - depends on the environment
        pytest.skip("dify-plugin is not installed: pip install 'secure-kv[dify]'")
    daemon = InMemoryDifyDaemon()
    try:
        credentials = {
            "secure_kv_master_key": generate_master_key(),
            "secure_kv_tenant_secret": generate_master_key(),
            "api_key": "a credential only this Dify workspace holds",
        }
        yield SimpleNamespace(
            runtime=SimpleNamespace(credentials=credentials, user_id="user-1"),
            session=daemon.connect(),
        )
    finally:
        daemon.close()


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    fixtures=["docs_environment", "self"],
).pytest()
