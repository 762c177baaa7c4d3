"""``secure-kv audit verify``: authenticate every record and data key, and walk every chain.

What each check finds is listed in docs/compliance.md. In short, per chain:

- every event's digest is recomputed from its content, its position and the previous
  event's digest: an edited, reordered or moved event fails here, by name;
- positions must run without gaps from 1 (or from the prune checkpoint): a deleted event
  is named by its position;
- the signature of each chain's last event is checked (it covers the whole chain through
  the digests); when it fails, every signature of that chain is checked to name the forged
  events (an inserted event, or a rewritten tail);
- with an anchor, every chain must still reach the anchored position with the anchored
  digest, so a cut tail or a removed chain is found, and the signing keys' public halves are
  pinned.

Signatures count only under a trusted signing key: one whose row authenticates under the
master key, or that the anchor pinned (:func:`~secure_kv.audit.signing_keys.trusted_signing_keys`).
A chain signed by any other key is reported, never passed: someone with write access can
add a key row and a chain signed by it. Without both the master key and an anchor (the
auditor's ``--chain-only`` with no anchor), the keys in the table are used unproven, and
the report says so.

Memory stays constant: events and records are streamed in key order.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from secure_kv.audit.events import Event, anchor_digest, checkpoint_message, event_digest, genesis_digest
from secure_kv.audit.signing_keys import trusted_signing_keys, verify_signature
from secure_kv.categories import CATEGORY_CODES, Category
from secure_kv.envelope import (
    DataKey,
    open_value,
    parse_header,
    record_context,
    row_in_domain,
    unwrap_data_key,
)
from secure_kv.errors import AuthenticationError, InvalidInputError, MasterKeyError, UnsupportedVersionError
from secure_kv.keys.base import MasterKeyProvider
from secure_kv.progress import NO_PROGRESS, Progress
from secure_kv.sql.audit_queries import (
    select_anchor,
    select_chain_keys,
    select_checkpoints,
    select_events_by_chain,
    select_signatures,
)
from secure_kv.sql.database import Database, UndecodableTextError
from secure_kv.sql.schema import audit_events, data_keys, metadata, records
from secure_kv.sql.statements import (
    count_rows,
    select_data_keys_to_verify,
    select_mistyped_cells,
    select_records_to_verify,
)

__all__ = [
    "ANCHOR_PREFIX",
    "Failure",
    "VerifyReport",
    "event_from_row",
    "parse_anchor",
    "stream_rows",
    "verify",
]

ANCHOR_PREFIX = "skv-anchor:v1:"
_ANCHOR = re.compile(r"skv-anchor:v1:(\d+):([0-9a-f]{64})")
MAX_LISTED_FAILURES = 1000
_BATCH = 2000
_CATEGORIES = {category.value: category for category in Category}

# What reading a cell of another type or out of range raises (the audit log's own checks).
_UNREADABLE = (ValueError, TypeError, AttributeError, OverflowError, struct.error, UndecodableTextError)


@dataclass(frozen=True)
class Failure:
    """One check that did not hold: what failed (``subject``) and which check (``check``)."""

    subject: str
    check: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.check}"


@dataclass
class VerifyReport:
    failures: list[Failure] = field(default_factory=list)
    failure_count: int = 0
    notes: list[str] = field(default_factory=list)
    records: int = 0
    shredded_records: int = 0
    data_keys: int = 0
    events: int = 0
    chains: int = 0
    signing_keys: int = 0

    @property
    def ok(self) -> bool:
        return self.failure_count == 0

    def fail(self, subject: str, check: str) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(Failure(subject, check))


def parse_anchor(text: str) -> tuple[int, bytes]:
    """``skv-anchor:v1:<id>:<digest>`` (as ``secure-kv audit anchor`` prints) -> (id, digest)."""
    match = _ANCHOR.fullmatch(text.strip())
    if match is None:
        raise InvalidInputError(
            "not an anchor: expected skv-anchor:v1:<id>:<64 hex digits>, as `secure-kv audit anchor` prints"
        )
    return int(match.group(1)), bytes.fromhex(match.group(2))


def verify(
    database: Database,
    provider: MasterKeyProvider | None,
    *,
    anchor: str | None = None,
    progress: Progress = NO_PROGRESS,
) -> VerifyReport:
    """Run every check. Without ``provider`` only the audit chain is checked (auditor mode).

    ``progress`` is started once per phase (``events``, then ``data keys`` and ``records``
    when the master key is given), with the phase's size.
    """
    report = VerifyReport()
    anchored = parse_anchor(anchor) if anchor is not None else None
    if database.dialect_name == "sqlite":
        _verify_cell_types(database, report)
    try:
        with database.connect() as connection:
            pinned, pinned_keys = (
                _check_anchor(connection, anchored, report) if anchored is not None else (None, None)
            )
            trusted = trusted_signing_keys(connection, provider, pinned_keys)
            report.signing_keys = len(trusted.stored)
            for key_id, public in sorted((pinned_keys or {}).items()):
                if trusted.stored.get(key_id) != public:
                    report.fail(
                        f"audit signing key {key_id}",
                        "its public key differs from the anchored one (replaced)",
                    )
            for problem in trusted.problems:
                report.fail(f"audit signing key {problem.key_id}", problem.problem)
            if provider is None and anchored is None:
                report.notes.append(
                    "signing keys were taken from the database without authentication: give the master "
                    "key, or pin them with --anchor"
                )
        _verify_chains(
            database, trusted.public, pinned, report, _Phase(database, audit_events, "events", progress)
        )
    except _UNREADABLE as error:
        # A cell of another type or out of range (SQLite stores anything; a server, any
        # number): reported, and the records are still checked.
        report.fail("audit log", f"a cell holds a value verify cannot read ({type(error).__name__}): edited")
    except UnsupportedVersionError as error:
        report.fail("audit log", _reason(error))
    if provider is not None:
        _verify_data_keys(database, provider, report, _Phase(database, data_keys, "data keys", progress))
        _verify_records(database, provider, report, _Phase(database, records, "records", progress))
    else:
        report.notes.append("records and data keys were not authenticated: that needs the master key")
    return report


class _Phase:
    """One phase of :func:`verify` on the progress contract: started with the table's row
    count, then told how many rows are done (``reached``) as the phase streams them."""

    def __init__(self, database: Database, table: sa.Table, name: str, progress: Progress) -> None:
        self._progress = progress
        self._done = 0
        # Counting is a scan of the table: only when someone watches.
        total = 0 if progress is NO_PROGRESS else _count(database, table)
        progress.start(total, name)

    def reached(self, done: int) -> None:
        self._progress.advance(done - self._done)
        self._done = done


def _count(database: Database, table: sa.Table) -> int:
    with database.connect() as connection:
        return int(connection.execute(count_rows(table)).scalar_one())


# --- the anchor -----------------------------------------------------------------------


def _check_anchor(
    connection: sa.Connection, anchored: tuple[int, bytes], report: VerifyReport
) -> tuple[dict[int, tuple[int, bytes]], dict[int, bytes]]:
    """The anchored heads and signing keys, once the anchor record matches the line kept
    outside; nothing pinned if it does not (then the failure is reported)."""
    anchor_id, expected = anchored
    row = connection.execute(select_anchor(anchor_id)).first()
    if row is None:
        report.fail(f"anchor {anchor_id}", "its record is missing from skv_audit_anchors (deleted)")
        return {}, {}
    created_at, text = row
    try:
        data = json.loads(text)
        heads = [(int(c), int(s), bytes.fromhex(d)) for c, s, d in data["heads"]]
        pinned_keys = [(int(k), bytes.fromhex(p)) for k, p in data["keys"]]
    # OverflowError: a number such as 1e999 (json reads inf); RecursionError: nesting.
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        report.fail(f"anchor {anchor_id}", "its record is malformed (edited)")
        return {}, {}
    if anchor_digest(anchor_id, int(created_at), heads, pinned_keys) != expected:
        report.fail(f"anchor {anchor_id}", "its record does not match the anchor kept outside (edited)")
        return {}, {}
    return {chain: (seq, digest) for chain, seq, digest in heads}, dict(pinned_keys)


# --- chains ---------------------------------------------------------------------------


@dataclass
class _ChainState:
    chain_id: int
    public_key: bytes | None
    signing_key_id: int | None
    expected: int
    previous: bytes
    last_seq: int = 0
    last_digest: bytes | None = None
    last_signature: bytes | None = None
    needs_full_signature_check: bool = False
    anchored: tuple[int, bytes] | None = None


def event_from_row(row: Any) -> Event:
    """The :class:`Event` an ``audit_events`` row records (what its digest covers)."""
    return Event(
        occurred_at=int(row.occurred_at),
        actor=row.actor,
        action=row.action,
        workspace=None if row.workspace is None else bytes(row.workspace),
        key=None if row.record_key is None else bytes(row.record_key),
        category=row.category,
        dek_version=row.dek_version,
        outcome=row.outcome,
        detail=row.detail,
    )


def _verify_chains(
    database: Database,
    keys: dict[int, bytes],
    pinned: dict[int, tuple[int, bytes]] | None,
    report: VerifyReport,
    tick: _Phase,
) -> None:
    with database.connect() as connection:
        chains = {int(chain_id): int(key_id) for chain_id, key_id in connection.execute(select_chain_keys())}
        checkpoints = {int(row.chain_id): row for row in connection.execute(select_checkpoints())}
    report.chains = len(chains)
    for chain_id, row in checkpoints.items():
        public = keys.get(int(row.signing_key_id))
        message = checkpoint_message(chain_id, int(row.seq), bytes(row.digest), int(row.created_at))
        if public is None or not verify_signature(public, bytes(row.signature), message):
            report.fail(
                f"prune checkpoint of chain {chain_id}", "its signature is invalid (forged or edited)"
            )
    seen: set[int] = set()
    state: _ChainState | None = None
    for row in stream_rows(database, select_events_by_chain()):
        chain_id = int(row.chain_id)
        if state is None or state.chain_id != chain_id:
            if state is not None:
                _finish_chain(database, state, pinned, checkpoints, report)
            seen.add(chain_id)
            state = _start_chain(chain_id, chains, keys, checkpoints, report)
            state.anchored = pinned.get(chain_id) if pinned else None
        _check_event(state, row, report)
        report.events += 1
        if report.events % 10_000 == 0:
            tick.reached(report.events)
    if state is not None:
        _finish_chain(database, state, pinned, checkpoints, report)
    for chain_id in checkpoints.keys() - seen:
        # Every event was pruned: the checkpoint is the chain's head.
        row = checkpoints[chain_id]
        state = _start_chain(chain_id, chains, keys, checkpoints, report)
        state.last_seq, state.last_digest = int(row.seq), bytes(row.digest)
        seen.add(chain_id)
        _check_pinned(state, pinned, checkpoints, report)
    if pinned:
        for chain_id, (seq, _) in sorted(pinned.items()):
            if chain_id not in seen:
                report.fail(f"chain {chain_id}", f"missing: the anchor has it up to event {seq} (deleted)")
    tick.reached(report.events)


def _start_chain(
    chain_id: int,
    chains: dict[int, int],
    keys: dict[int, bytes],
    checkpoints: dict[int, Any],
    report: VerifyReport,
) -> _ChainState:
    key_id = chains.get(chain_id)
    if key_id is None:
        report.fail(
            f"chain {chain_id}", "its events belong to no registered chain (inserted, or its row deleted)"
        )
    public = keys.get(key_id) if key_id is not None else None
    if key_id is not None and public is None:
        report.fail(
            f"chain {chain_id}",
            f"its signing key {key_id} is missing or not trusted (deleted, or planted): "
            "its events are not verified",
        )
    checkpoint = checkpoints.get(chain_id)
    if checkpoint is not None:
        return _ChainState(chain_id, public, key_id, int(checkpoint.seq) + 1, bytes(checkpoint.digest))
    return _ChainState(chain_id, public, key_id, 1, genesis_digest(chain_id, key_id or 0))


def _check_event(state: _ChainState, row: Any, report: VerifyReport) -> None:
    seq = int(row.seq)
    stored = bytes(row.digest)
    where = f"event {seq} of chain {state.chain_id}"
    if seq < state.expected:
        report.fail(where, "it lies before the chain's prune checkpoint (inserted)")
    elif seq > state.expected:
        missing = f"{state.expected}" if seq == state.expected + 1 else f"{state.expected}-{seq - 1}"
        report.fail(f"chain {state.chain_id}", f"event(s) {missing} missing (deleted)")
    elif event_digest(state.chain_id, seq, state.previous, event_from_row(row)) != stored:
        report.fail(
            where,
            "its content, position or link does not match its digest (edited, reordered, or moved)",
        )
        state.needs_full_signature_check = True
    if state.anchored is not None and state.anchored[0] == seq and state.anchored[1] != stored:
        report.fail(where, "it differs from the anchored event (replaced after the anchor was taken)")
    state.expected = seq + 1
    state.previous = stored
    state.last_seq, state.last_digest, state.last_signature = seq, stored, bytes(row.signature)


def _finish_chain(
    database: Database,
    state: _ChainState,
    pinned: dict[int, tuple[int, bytes]] | None,
    checkpoints: dict[int, Any],
    report: VerifyReport,
) -> None:
    head_ok = (
        state.public_key is not None
        and state.last_digest is not None
        and state.last_signature is not None
        and verify_signature(state.public_key, state.last_signature, state.last_digest)
    )
    if not head_ok or state.needs_full_signature_check:
        _check_every_signature(database, state, report)
    _check_pinned(state, pinned, checkpoints, report)


def _check_every_signature(database: Database, state: _ChainState, report: VerifyReport) -> None:
    if state.public_key is None:
        return
    for row in stream_rows(database, select_signatures(state.chain_id)):
        if not verify_signature(state.public_key, bytes(row.signature), bytes(row.digest)):
            report.fail(
                f"event {row.seq} of chain {state.chain_id}",
                "its signature is invalid (inserted or rewritten without the signing key)",
            )


def _check_pinned(
    state: _ChainState,
    pinned: dict[int, tuple[int, bytes]] | None,
    checkpoints: dict[int, Any],
    report: VerifyReport,
) -> None:
    if not pinned or state.chain_id not in pinned:
        return
    seq, digest = pinned[state.chain_id]
    checkpoint = checkpoints.get(state.chain_id)
    if checkpoint is not None and seq <= int(checkpoint.seq):
        if seq == int(checkpoint.seq) and bytes(checkpoint.digest) != digest:
            report.fail(f"chain {state.chain_id}", f"event {seq} differs from the anchored one")
        return  # pruned since the anchor: the signed checkpoint vouches for it
    if state.last_seq < seq:
        report.fail(
            f"chain {state.chain_id}",
            f"cut: the anchor has events up to {seq}, the log ends at {state.last_seq} (tail deleted)",
        )


# --- data keys and records ------------------------------------------------------------


def _verify_cell_types(database: Database, report: VerifyReport) -> None:
    """SQLite only (servers enforce column types): every cell of every table holds the
    storage class its column declares, so an integer is never text, a blob never text.
    Generated from the schema, so a new column is covered too."""
    for table in metadata.sorted_tables:
        checks = {column.name: _storage_classes(column) for column in table.columns}
        query = select_mistyped_cells(table, checks, MAX_LISTED_FAILURES)
        key_columns = len(table.primary_key.columns)
        with database.connect() as connection:
            for row in connection.execute(query):
                where = ", ".join(_show(cell) for cell in row[:key_columns])
                for (name, kinds), kind in zip(checks.items(), row[key_columns:], strict=True):
                    if kind not in kinds:
                        found = str(kind)
                        report.fail(f"row ({where}) of {table.name}", f"column {name} holds {found} (edited)")


def _storage_classes(column: Any) -> tuple[str, ...]:
    if isinstance(column.type, sa.LargeBinary):
        kinds: tuple[str, ...] = ("blob",)
    elif isinstance(column.type, sa.Integer):
        kinds = ("integer",)
    else:
        kinds = ("text",)
    return (*kinds, "null") if column.nullable else kinds


def _verify_data_keys(
    database: Database, provider: MasterKeyProvider, report: VerifyReport, tick: _Phase
) -> None:
    query = select_data_keys_to_verify(database.dialect_name == "sqlite")
    for row in stream_rows(database, query):
        report.data_keys += 1
        name, version, kek_id, wrapped = row[:4]
        where = f"data key {_show_version(version)} of workspace {_show(name)}"
        if not _types_hold(row[4:], ("blob", "integer", "text", ("blob", "null"))):
            report.fail(where, "a cell holds a value of another type (edited)")
            continue
        if wrapped is None:
            continue  # destroyed by a shred
        try:
            _unwrap(provider, bytes(name), version, _text(kek_id), bytes(wrapped))
        except (AuthenticationError, MasterKeyError, UnsupportedVersionError) as error:
            report.fail(where, _reason(error))
    tick.reached(report.data_keys)


def _unwrap(provider: MasterKeyProvider, name: bytes, version: Any, kek_id: str, wrapped: bytes) -> DataKey:
    if type(version) is not int or not 0 < version < 1 << 32:
        raise AuthenticationError("its version is out of range (edited)")
    master = provider.find(kek_id)
    if master is None:
        raise MasterKeyError(f"wrapped by master key {kek_id!r}, which the provider does not hold")
    return unwrap_data_key(master, wrapped, name, version)


# SQLite lets any cell hold any type: what secure_kv writes in each record column.
_RECORD_TYPES = ("blob", "blob", "text", "integer", ("integer", "null"), "blob")


def _verify_records(
    database: Database, provider: MasterKeyProvider, report: VerifyReport, tick: _Phase
) -> None:
    query = select_records_to_verify(database.dialect_name == "sqlite")
    current_workspace = None
    cache: dict[int, DataKey | Exception] = {}
    for row in stream_rows(database, query):
        report.records += 1
        if report.records % 10_000 == 0:
            tick.reached(report.records)
        name, workspace_id, record_key, category_cell, dek_version, expires_at, blob = row[:7]
        kek_id, wrapped, key_version = row[7:10]
        if name is None:
            report.fail(
                f"record {_show(record_key)} of workspace id {workspace_id!r}",
                "it belongs to no workspace (edited)",
            )
            continue
        name = bytes(name)
        if workspace_id != current_workspace:
            current_workspace, cache = workspace_id, {}  # one workspace's keys at a time
        where = f"record {_show(record_key)} of workspace {_show(name)}"
        if not _types_hold(row[10:], _RECORD_TYPES) or not row_in_domain(dek_version, expires_at, blob):
            report.fail(where, "a cell holds a value outside its column's domain (edited)")
            continue
        if key_version is None:
            report.fail(where, f"it names data key {dek_version}, which does not exist")
            continue
        if wrapped is None:
            report.shredded_records += 1
            continue
        key = cache.get(dek_version)
        if key is None:
            try:
                key = _unwrap(provider, name, dek_version, _text(kek_id), bytes(wrapped))
            except (AuthenticationError, MasterKeyError, UnsupportedVersionError) as error:
                key = error
            cache[dek_version] = key
        if isinstance(key, Exception):
            report.fail(where, f"its data key {dek_version} cannot be used: {_reason(key)}")
            continue
        category = _CATEGORIES.get(_text(category_cell))
        if category is None:
            report.fail(where, "its category is not one secure_kv writes (edited)")
            continue
        try:
            header = parse_header(blob)
            if header.dek_version != dek_version:
                raise AuthenticationError("header names another data key")
            context = record_context(name, bytes(record_key), CATEGORY_CODES[category], expires_at)
            open_value(key, context, blob, header)  # the plaintext is dropped at once
        except UnsupportedVersionError as error:
            report.fail(where, _reason(error))
        except AuthenticationError:
            report.fail(where, "it failed authentication (altered, truncated, or moved)")
    tick.reached(report.records)


def _types_hold(found: Any, expected: tuple[str | tuple[str, ...], ...]) -> bool:
    if not found:
        return True  # not SQLite: the server enforces each column's type
    return all(
        kind == want or (isinstance(want, tuple) and kind in want)
        for kind, want in zip(found, expected, strict=True)
    )


def _text(cell: Any) -> str:
    """A text cell as str (bytes on SQLite: see
    :func:`~secure_kv.sql.statements.select_records_to_verify`); "" if not UTF-8."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        try:
            return bytes(cell).decode("utf-8")
        except UnicodeDecodeError:
            return ""
    return cell if isinstance(cell, str) else ""


def _show_version(version: Any) -> str:
    return str(version) if type(version) is int else "(edited)"


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


def _show(name: Any) -> str:
    if not isinstance(name, (bytes, bytearray, memoryview)):
        return "(edited)"
    return repr(bytes(name).decode("utf-8", "replace"))


def stream_rows(database: Database, query: Any) -> Iterator[Any]:
    """Rows of ``query`` fetched in batches from a server-side cursor: constant memory."""
    with database.connect() as connection, connection.begin():
        yield from connection.execute(query.execution_options(stream_results=True, yield_per=_BATCH))
