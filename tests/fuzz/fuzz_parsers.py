"""Coverage-guided fuzzing (atheris) of every parser of stored bytes, for ``make fuzz``.

The first input byte picks the parser, the rest is the stored bytes. A parser may raise only
its documented error (see tests/adversarial/test_parsers.py, whose fixtures this reuses);
anything else is a crash that atheris reports with the input that caused it. Run:

    .venv/bin/python tests/fuzz/fuzz_parsers.py -max_total_time=120
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from secure_kv import envelope
    from secure_kv.audit.signing_keys import _Retired, _unwrap, verify_signature
    from secure_kv.audit.verify import parse_anchor
    from secure_kv.errors import (
        AuthenticationError,
        InvalidInputError,
        MasterKeyError,
        UnsupportedVersionError,
    )
    from secure_kv.integrations import dify

from tests.adversarial import test_parsers as fixtures

STORED = (AuthenticationError, UnsupportedVersionError)


def _dify_get(data: bytes, target: str) -> None:
    storage = fixtures.DictStorage()
    storage.data.update(fixtures.DIFY_ENTRIES)
    storage.data[target] = data
    fixtures.encrypted_storage(storage).get("openai")


TARGETS: list[tuple[Callable[[bytes], Any], tuple[type[BaseException], ...]]] = [
    (envelope.parse_header, STORED),
    (lambda b: envelope.open_value(fixtures.DEK, fixtures.CONTEXT, b), STORED),
    (lambda b: envelope.reseal_value(fixtures.DEK, fixtures.NEW_DEK, fixtures.CONTEXT, b), STORED),
    (lambda b: envelope.unwrap_data_key(fixtures.KEK, b, fixtures.WORKSPACE, 3), STORED),
    (lambda b: _unwrap(fixtures.KEK, 1, fixtures.PUBLIC, b), (*STORED, _Retired)),
    (lambda b: verify_signature(b[:32], b[32:96], b[96:]), ()),
    (lambda b: parse_anchor(b.decode("latin-1")), (InvalidInputError,)),
    (dify._parse_record, STORED),
    (dify._parse_key_record, STORED),
    (lambda b: _dify_get(b, "openai"), (*STORED, MasterKeyError)),
    (lambda b: _dify_get(b, fixtures.DIFY_KEY_NAMES[0]), (*STORED, MasterKeyError)),
]
SEEDS = [fixtures.SEALED, fixtures.WRAPPED, fixtures.WRAPPED_SEED, fixtures.DIFY_RECORD]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    parse, allowed = TARGETS[data[0] % len(TARGETS)]
    try:
        parse(data[1:])
    except allowed:
        pass


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="skv-fuzz-corpus-"))
    for index, seed in enumerate(SEEDS):
        for target in range(len(TARGETS)):
            (corpus / f"seed-{index}-{target}").write_bytes(bytes([target]) + seed)
    atheris.Setup([*sys.argv, str(corpus)], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
