from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from secure_kv.errors import MasterKeyError
from secure_kv.keys import FileMasterKey
from secure_kv.keys.base import generate_master_key, parse_master_key


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_one_key_per_line_current_first(tmp_path: Path) -> None:
    current, old = generate_master_key(), generate_master_key()
    path = _write(tmp_path / "keys", f"# master keys\n{current}\n\n{old}\n", 0o600)
    provider = FileMasterKey(path)
    assert provider.current_key().kek_id == parse_master_key(current, "t").kek_id
    assert [k.kek_id for k in provider.previous_keys()] == [parse_master_key(old, "t").kek_id]


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o622])
def test_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "keys", generate_master_key(), mode)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        FileMasterKey(path)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o444, 0o604, 0o610, 0o601])
def test_file_open_to_group_or_others_is_refused_naming_chmod_600(tmp_path: Path, mode: int) -> None:
    text = generate_master_key()
    path = _write(tmp_path / "keys", text, mode)
    with pytest.raises(MasterKeyError, match="chmod 600") as raised:
        FileMasterKey(path)
    assert text not in str(raised.value)


def test_private_file_gives_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "keys", generate_master_key(), 0o400)
    with caplog.at_level(logging.WARNING, logger="secure_kv"):
        FileMasterKey(path)
    assert not caplog.records


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="keygen"):
        FileMasterKey(tmp_path / "nope")


def test_file_without_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="holds no key"):
        FileMasterKey(_write(tmp_path / "keys", "# only a comment\n\n", 0o600))


def test_bad_line_is_named_by_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys", f"{generate_master_key()}\nnot-a-key\n", 0o600)
    with pytest.raises(MasterKeyError, match="line 2"):
        FileMasterKey(path)
