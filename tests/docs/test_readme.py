"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from secure_kv.keys.base import generate_master_key

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has no Python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    exec(compile(example, str(README), "exec"), {})
    assert (tmp_path / "store.db").exists()
