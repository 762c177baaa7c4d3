"""One time format everywhere: ``list``, ``audit log`` and the reports print one instant the same way."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from secure_kv._clock import format_time, parse_time
from secure_kv.cli import main
from secure_kv.errors import InvalidInputError

ISO_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


LAST_MICROSECOND_OF_9999 = 253_402_300_799_999_999


@pytest.mark.parametrize(
    "micros", [0, 1, 1_764_547_200_000_000, 1_764_547_200_123_456, LAST_MICROSECOND_OF_9999]
)
def test_format_time_always_prints_six_fraction_digits_and_parses_back(micros: int) -> None:
    text = format_time(micros)
    assert text is not None and ISO_MICROS.fullmatch(text), text
    assert parse_time(text) == micros


def test_format_time_of_no_time_is_none() -> None:
    assert format_time(None) is None


def test_parse_time_reads_spans_back_from_now() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("1h", now=now) == int(now.timestamp() * 1_000_000) - 3_600_000_000


def test_parse_time_refuses_text_that_is_no_time() -> None:
    with pytest.raises(InvalidInputError, match="not a time"):
        parse_time("yesterday-ish")


def test_list_and_audit_log_print_the_same_instant_the_same_way(tmp_path: Path) -> None:
    env = {
        "SECURE_KV_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "SECURE_KV_MASTER_KEY": "A" * 43 + "=",
    }
    runner = CliRunner()
    assert runner.invoke(main, ["init"], env=env).exit_code == 0
    stored = runner.invoke(main, ["set", "ws", "color", "--category", "preference"], input="blue", env=env)
    assert stored.exit_code == 0, stored.output
    listed = runner.invoke(main, ["list", "ws", "--format", "json"], env=env)
    logged = runner.invoke(main, ["audit", "log", "--format", "json"], env=env)
    assert listed.exit_code == 0 and logged.exit_code == 0, listed.output + logged.output
    created = json.loads(listed.stdout)[0]["created_at"]
    times = [event["time"] for event in json.loads(logged.stdout)]
    assert ISO_MICROS.fullmatch(created)
    assert times and all(ISO_MICROS.fullmatch(t) for t in times)
