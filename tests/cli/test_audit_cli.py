"""The ``secure-kv audit`` commands: output that parses, never a value, exit codes that mean
something, and logs with no value or key material."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from secure_kv import Category, SecureStore
from secure_kv._env_keys import environment_keys
from secure_kv.cli import main
from secure_kv.keys import StaticMasterKey
from secure_kv.keys.base import generate_master_key, parse_master_key
from secure_kv.keys.env import forget_environment_keys

SECRETS = {"openai": b"sk-cli-test-token-0123456789abcdef", "github": b"not-a-pref-but-secret-value-42"}


@pytest.fixture
def populated(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    text = generate_master_key()
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", text)
    monkeypatch.setenv("SECURE_KV_DATABASE_URL", database_url)
    from secure_kv.keys import EnvMasterKey

    with SecureStore.open(database_url, master_key=EnvMasterKey()) as store:
        for workspace in ("tenant-a", "tenant-b"):
            ws = store.workspace(workspace)
            ws.set("openai", SECRETS["openai"], category=Category.TOKEN)
            ws.set("lang", b"en")
            ws.set("page", b"<html>cached</html>", category=Category.CACHE, ttl=600)
            assert ws.get("openai") == SECRETS["openai"]
    assert parse_master_key(text, "test")
    yield database_url


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value.decode() not in text


def test_report_json_is_an_array_of_record_metadata_without_values(populated: str) -> None:
    code, out, err = run("audit", "report", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 6
    required = {
        "workspace",
        "key",
        "category",
        "created_at",
        "updated_at",
        "expires_at",
        "dek_version",
        "kek_id",
    }
    assert all(required <= set(row) and row["algorithm"] == "AES-256-GCM/HKDF-SHA256" for row in rows)
    assert {(r["workspace"], r["key"], r["category"]) for r in rows} >= {("tenant-a", "openai", "token")}
    assert "records: 6 (cache 2, preference 2, token 2)" in err
    no_secret(out + err)


def test_report_csv_parses_and_filters_by_workspace(populated: str) -> None:
    code, out, err = run("audit", "report", "--format", "csv", "--workspace", "tenant-b")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["workspace"], r["key"]) for r in rows] == [
        ("tenant-b", "lang"),
        ("tenant-b", "openai"),
        ("tenant-b", "page"),
    ]
    no_secret(out + err)


def test_log_json_is_an_array_of_events_and_filters(populated: str) -> None:
    code, out, err = run("audit", "log", "--format", "json", "--workspace", "tenant-a", "--since", "1h")
    assert code == 0, err
    events = json.loads(out)
    assert all({"time", "actor", "action", "workspace", "key"} <= set(e) for e in events)
    assert [(e["action"], e["key"]) for e in events] == [
        ("datakey.create", None),
        ("record.write", "openai"),
        ("record.read", "openai"),
    ]
    code, out, _ = run("audit", "log", "--since", "2000-01-01T00:00:00Z")
    assert code == 0 and "record.read" in out and "tenant-b/openai" in out
    code, out, _ = run("audit", "log", "--format", "json", "--since", "2999-01-01")
    assert json.loads(out) == []
    no_secret(out)


def test_anchor_then_verify_passes_and_a_cut_tail_fails_with_the_reason(populated: str) -> None:
    code, anchor, err = run("audit", "anchor")
    assert code == 0, err
    anchor = anchor.strip()
    assert anchor.startswith("skv-anchor:v1:")
    code, out, err = run("audit", "verify", "--anchor", anchor)
    assert (code, out.strip()) == (0, "verified: every check holds"), err
    engine = sa.create_engine(populated)
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM skv_audit_events WHERE action = 'record.read'"))
    engine.dispose()
    code, out, err = run("audit", "verify", "--anchor", anchor, "--chain-only")
    assert code == 1
    assert "FAILED chain 1: cut: the anchor has events up to" in out
    assert "checks failed" in err


def test_verify_without_a_master_key_needs_chain_only(
    populated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECURE_KV_MASTER_KEY", raising=False)
    forget_environment_keys()  # the CLI took the key out of os.environ and kept it
    code, _, err = run("audit", "verify")
    assert code == 1 and err.startswith("error: no master key")
    code, _out, err = run("audit", "verify", "--chain-only")
    assert code == 0 and "records and data keys were not authenticated" in err


def test_prune_keeps_the_log_verifiable(populated: str) -> None:
    code, out, err = run("audit", "prune", "--before", "2999-01-01")
    assert code == 0, err
    assert err.startswith("removed ")
    code, out, err = run("audit", "verify")
    assert code == 0, out + err


def test_a_bad_time_is_a_one_line_error(populated: str) -> None:
    code, _, err = run("audit", "log", "--since", "yesterday-ish")
    assert code == 1 and err.startswith("error: 'yesterday-ish' is not a time")


@pytest.mark.parametrize("command", ["report", "verify", "log", "anchor", "prune"])
def test_every_audit_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(main, ["audit", command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_a_whole_workload_logged_at_debug_holds_no_value_or_key_material(
    populated: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_text = environment_keys()["SECURE_KV_MASTER_KEY"]  # the CLI took it out of os.environ
    caplog.set_level(logging.DEBUG)
    for logger in ("sqlalchemy.engine", "sqlalchemy.pool", "alembic", "secure_kv"):
        caplog.set_level(logging.DEBUG, logger=logger)  # restored after the test
    from secure_kv.keys import EnvMasterKey

    with SecureStore.open(populated, master_key=EnvMasterKey(), audit_writes="all") as store:
        ws = store.workspace("tenant-a")
        ws.set("github", SECRETS["github"])  # a preference that looks like a credential: warned
        ws.set("openai", SECRETS["openai"], category=Category.TOKEN)
        assert ws.get("openai") == SECRETS["openai"]
        assert ws.get("github") == SECRETS["github"]
        ws.delete("github")
        repr(store), repr(ws), repr(store._audit.signer())
    for args in (
        ("audit", "report"),
        ("audit", "log", "--format", "json"),
        ("audit", "verify"),
        ("audit", "anchor"),
    ):
        code, out, err = run(*args)
        assert code == 0, err
        no_secret(out + err)
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert logged  # the workload did log (SQL at DEBUG)
    no_secret(logged)
    assert key_text not in logged
    for record in caplog.records:
        for arg in record.args if isinstance(record.args, tuple) else ():
            if isinstance(arg, (bytes, bytearray)):
                assert not any(value in arg for value in SECRETS.values())


@pytest.mark.parametrize(
    "command",
    [
        ["audit", "report"],
        ["audit", "log"],
        ["audit", "verify"],
        ["audit", "anchor"],
        ["status"],
        ["list", "w"],
    ],
)
def test_admin_commands_on_a_mistyped_sqlite_path_fail_and_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "env")
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    typo = tmp_path / "typo.db"
    result = CliRunner().invoke(main, ["--database-url", f"sqlite:///{typo}", *command])
    assert result.exit_code != 0, result.output
    assert not typo.exists()


def test_audit_commands_record_the_actor_of_the_settings_given(sqlite_url: str) -> None:
    import io

    from secure_kv import commands
    from secure_kv.keys import StaticMasterKey
    from secure_kv.settings import load_settings

    text = generate_master_key()
    key = StaticMasterKey(base64.urlsafe_b64decode(text))
    SecureStore.open(sqlite_url, master_key=key).close()
    settings = load_settings(database_url=sqlite_url, actor="auditor-bob")
    commands.audit_report(io.StringIO(), settings=settings, master_key=key)
    out = io.StringIO()
    commands.audit_log(out, settings=settings, fmt="json", master_key=key)
    report_events = [e for e in json.loads(out.getvalue()) if e["action"] == "audit.report"]
    assert report_events and all(e["actor"] == "auditor-bob" for e in report_events)


def test_an_impossible_since_span_is_a_one_line_error() -> None:
    result = CliRunner().invoke(main, ["audit", "log", "--since", "99999999999d"])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["audit_report", "audit_log"])
def test_an_unknown_output_format_raises_the_projects_bad_input_error(sqlite_url: str, command: str) -> None:
    from secure_kv import commands
    from secure_kv.errors import InvalidInputError, SecureKVError
    from secure_kv.settings import load_settings

    SecureStore.open(sqlite_url, master_key=_static_key()).close()
    with pytest.raises(InvalidInputError, match="format") as raised:
        getattr(commands, command)(io.StringIO(), settings=load_settings(database_url=sqlite_url), fmt="xml")
    # A script catches it as the project's root error, or as the builtin it always was.
    assert isinstance(raised.value, SecureKVError) and isinstance(raised.value, ValueError)


class _Recording:
    """A :class:`secure_kv.progress.Progress` that keeps what it was told, per phase."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []
        self.done: dict[str, int] = {}

    def start(self, total: int, description: str) -> None:
        self.phases.append((description, total))
        self.done[description] = 0

    def describe(self, description: str) -> None:
        pass

    def advance(self, count: int) -> None:
        self.done[self.phases[-1][0]] += count


def _static_key() -> StaticMasterKey:
    return StaticMasterKey(b"\x07" * 32)


def test_verify_and_report_report_progress_through_the_one_progress_contract(sqlite_url: str) -> None:
    from secure_kv import commands
    from secure_kv.settings import load_settings

    key = _static_key()
    with SecureStore.open(sqlite_url, master_key=key) as store:
        for number in range(5):
            store.workspace(f"w{number % 2}").set(f"k{number}", b"v", category=Category.TOKEN)
    settings = load_settings(database_url=sqlite_url)

    verified = _Recording()
    report = commands.audit_verify(settings=settings, master_key=key, progress=verified)
    assert report.ok
    assert [name for name, _ in verified.phases] == ["events", "data keys", "records"]
    totals = dict(verified.phases)
    assert totals["records"] == verified.done["records"] == report.records == 5
    assert totals["data keys"] == verified.done["data keys"] == report.data_keys == 2
    assert verified.done["events"] == report.events <= totals["events"]

    written = _Recording()
    summary = commands.audit_report(io.StringIO(), settings=settings, workspace="w0", progress=written)
    assert written.phases == [("records", 3)]
    assert written.done["records"] == summary.records == 3


def test_the_callbacks_audit_report_and_verify_took_before_progress_still_work(sqlite_url: str) -> None:
    """secure_kv.commands is public: the keyword callbacks of the first release keep working
    (with a DeprecationWarning) now that progress goes through one Progress contract."""
    from secure_kv import commands
    from secure_kv.settings import load_settings

    key = _static_key()
    with SecureStore.open(sqlite_url, master_key=key) as store:
        for number in range(5):
            store.workspace(f"w{number % 2}").set(f"k{number}", b"v", category=Category.TOKEN)
    settings = load_settings(database_url=sqlite_url)

    totals: list[int] = []
    rows: list[int] = []
    with pytest.warns(DeprecationWarning, match="on_total"):
        summary = commands.audit_report(
            io.StringIO(), settings=settings, workspace="w0", on_total=totals.append, on_row=rows.append
        )
    assert totals == [3] and rows[-1] == summary.records == 3

    ticks: list[tuple[str, int]] = []
    sizes: list[dict[str, int]] = []
    with pytest.warns(DeprecationWarning):
        report = commands.audit_verify(
            settings=settings,
            master_key=key,
            progress=lambda phase, done: ticks.append((phase, done)),
            on_totals=sizes.append,
        )
    assert report.ok
    assert ("records", 5) in ticks and ("data keys", 2) in ticks
    assert sizes[0]["records"] == 5 and sizes[0]["data keys"] == 2 and sizes[0]["events"] >= report.events
