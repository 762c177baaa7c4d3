"""The sweep-and-retry loop that retires data-key rows once nothing names them."""

from __future__ import annotations

import pytest

from secure_kv.admin.retirement import retire_when_unreferenced
from secure_kv.errors import StorageError


def test_it_sweeps_again_until_the_delete_succeeds() -> None:
    outcomes = iter([False, None, True])
    sweeps = []
    retire_when_unreferenced(
        lambda: sweeps.append(1), lambda: next(outcomes), patience=60, stuck=lambda: StorageError("stuck")
    )
    assert len(sweeps) == 3


def test_it_gives_up_when_writers_keep_the_old_key_past_its_patience() -> None:
    attempts = []

    def refused() -> None:
        attempts.append(1)

    with pytest.raises(StorageError, match="run it again"):
        retire_when_unreferenced(
            lambda: None, refused, patience=0, stuck=lambda: StorageError("still in use: run it again")
        )
    assert attempts == [1]
