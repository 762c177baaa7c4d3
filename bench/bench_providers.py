"""What each master-key provider costs: warm set/get against env, the cold open of a
workspace, and ``rotate master`` of 1,000 workspaces; one run.

Providers: env, file, keyring (gnome-keyring-daemon through the Secret Service, in a D-Bus
session this script starts), pkcs11 (a SoftHSM2 token this script makes) and aws-kms
(moto's server mode on a local port: a stand-in for AWS KMS, so its figures are a local
HTTP round trip, not AWS's latency).

What is measured
    Warm set/get: one SQLite store per provider, one workspace whose data key is already
    unwrapped (cached), 100-byte values; ``set`` then ``get`` of the same key. Providers
    alternate in shuffled blocks (bench/_harness.py); a provider's figure is the median
    per-operation time, and its ratio is paired round by round with env's. Target: at most
    1.05x env (the master key is not on the warm path).

    Cold open: a new ``SecureStore`` on an existing file and the first ``get`` of a
    workspace, which reads and unwraps its data key through the provider (median of
    repetitions), and the provider's unwrap alone.

    Master rotation: 1,000 workspaces (1 record each) with data keys wrapped by a raw
    previous key; ``rotate master`` rewraps all of them under the provider's key (one run
    on a fresh copy of the same file).

Usage (from the repo root)::

    python bench/bench_providers.py            # full run, writes bench/providers.json
    python bench/bench_providers.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import interleave, quartiles
from secure_kv import SecureStore
from secure_kv.admin.rotation import rotate_master
from secure_kv.keys import (
    AwsKmsMasterKey,
    EnvMasterKey,
    FileMasterKey,
    KeyringMasterKey,
    MasterKeyProvider,
    RawMasterKey,
    StaticMasterKey,
    WithPreviousKeys,
)
from secure_kv.keys.base import generate_master_key
from tests.keys.services import MotoServer, SecretService, create_softhsm, moto_environ

PROVIDERS = ("env", "file", "keyring", "pkcs11", "aws-kms")
Factories = dict[str, Callable[[], MasterKeyProvider]]


@contextmanager
def services(directory: Path) -> Iterator[Factories]:
    """Start the key services and yield a factory of each provider over one fixed key."""
    moto = MotoServer()
    moto.start()
    for name, value in moto_environ(moto).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    secret = SecretService(directory / "secret-service")
    secret.start()
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = secret.address
    try:
        import keyring
        from keyring.backends.SecretService import Keyring as SecretServiceKeyring

        keyring.set_keyring(SecretServiceKeyring())
        KeyringMasterKey(create=True)
        hsm = create_softhsm(directory / "softhsm")
        hsm.provider("bench")
        import boto3

        key_id = boto3.client("kms").create_key()["KeyMetadata"]["KeyId"]
        env_key = generate_master_key()
        key_file = directory / "master.keys"
        key_file.write_text(generate_master_key() + "\n")
        key_file.chmod(0o600)
        from secure_kv.keys import Pkcs11MasterKey

        yield {
            "env": lambda: EnvMasterKey({"SECURE_KV_MASTER_KEY": env_key}),
            "file": lambda: FileMasterKey(key_file),
            "keyring": lambda: KeyringMasterKey(),
            "pkcs11": lambda: Pkcs11MasterKey(hsm.module, hsm.token_label, "bench", hsm.pin),
            "aws-kms": lambda: AwsKmsMasterKey(key_id),
        }
    finally:
        secret.stop()
        moto.stop()


def warm(
    factories: dict[str, Callable[[], MasterKeyProvider]], directory: Path, quick: bool
) -> dict[str, Any]:
    stores = {}
    tasks = {}
    value = os.urandom(100)
    for name, make in factories.items():
        store = SecureStore.open(f"sqlite:///{directory / f'warm-{name}.db'}", master_key=make())
        workspace = store.workspace("tenant:plugin")
        workspace.set("k", value)
        stores[name] = store

        def run(n: int, workspace: Any = workspace) -> float:
            start = time.perf_counter()
            for _ in range(n):
                workspace.set("k", value)
                workspace.get("k")
            return time.perf_counter() - start

        tasks[name] = run
    rounds, block = (5, 100) if quick else (21, 400)
    for run in tasks.values():  # warm-up, not counted: imports, statement caches, pools
        run(block)
    samples, _ = interleave(tasks, rounds=rounds, block_ops=block, rng=random.Random(7))
    results = {}
    for name in factories:
        ratios = [mine / base for mine, base in zip(samples[name].values, samples["env"].values, strict=True)]
        low, high = quartiles(ratios)
        results[name] = {
            "set_get_us": samples[name].median * 1e6,
            "ratio_to_env": statistics.median(ratios),
            "ratio_iqr": [low, high],
        }
    for store in stores.values():
        store.close()
    return results


def cold(factories: Factories, directory: Path, quick: bool) -> dict[str, Any]:
    repetitions = 5 if quick else 25
    providers = {name: make() for name, make in factories.items()}
    opens: dict[str, list[float]] = {name: [] for name in factories}
    for name, provider in providers.items():
        with SecureStore.open(f"sqlite:///{directory / f'cold-{name}.db'}", master_key=provider) as store:
            store.workspace("tenant:plugin").set("k", b"v")
    rng = random.Random(5)
    for _ in range(repetitions):  # providers alternate, in a fresh order each round
        order = list(providers)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            url = f"sqlite:///{directory / f'cold-{name}.db'}"
            with SecureStore.open(url, master_key=providers[name]) as store:
                store.workspace("tenant:plugin").get("k")
            opens[name].append(time.perf_counter() - start)
    results = {}
    for name, make in factories.items():
        key = providers[name].current_key()
        wrapped = key.wrap(os.urandom(32), b"bench")
        unwraps = []
        for _ in range(repetitions * 4):
            start = time.perf_counter()
            key.unwrap(wrapped, b"bench")
            unwraps.append(time.perf_counter() - start)
        makes = []
        for _ in range(5):
            start = time.perf_counter()
            make()
            makes.append(time.perf_counter() - start)
        results[name] = {
            "open_and_first_get_ms": statistics.median(opens[name]) * 1e3,
            "unwrap_ms": statistics.median(unwraps) * 1e3,
            "make_provider_ms": statistics.median(makes) * 1e3,
        }
    return results


def rotation(factories: Factories, directory: Path, quick: bool) -> dict[str, Any]:
    count = 100 if quick else 1000
    rounds = 1 if quick else 3
    old = os.urandom(32)
    template = directory / "rotation-template.db"
    with SecureStore.open(f"sqlite:///{template}", master_key=StaticMasterKey(old)) as store:
        for n in range(count):
            store.workspace(f"tenant-{n}:plugin").set("k", b"v")
    providers = {name: WithPreviousKeys(make(), [RawMasterKey(old)]) for name, make in factories.items()}
    seconds: dict[str, list[float]] = {name: [] for name in factories}
    rng = random.Random(11)
    for _ in range(rounds):  # providers in a fresh order each round, each on a fresh copy
        order = list(factories)
        rng.shuffle(order)
        for name in order:
            path = directory / f"rotation-{name}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
                if Path(f"{template}{suffix}").exists():
                    shutil.copy(f"{template}{suffix}", f"{path}{suffix}")
            with SecureStore.open(f"sqlite:///{path}", master_key=providers[name]) as store:
                start = time.perf_counter()
                report = rotate_master(store)
                seconds[name].append(time.perf_counter() - start)
            assert report.complete and report.rewrapped == count, report
    return {
        name: {"workspaces": count, "seconds": statistics.median(values), "runs": values}
        for name, values in seconds.items()
    }


def table(results: dict[str, Any]) -> str:
    count = results["rotation"]["env"]["workspaces"]
    lines = [
        "| provider | warm set+get (µs) | ratio to env (IQR) | cold open + first get (ms) | unwrap (ms) "
        f"| making the provider (ms) | rotate master, {count:,} workspaces (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in PROVIDERS:
        w, c, r = results["warm"][name], results["cold"][name], results["rotation"][name]
        lines.append(
            f"| {name} | {w['set_get_us']:.0f} | {w['ratio_to_env']:.3f}x "
            f"({w['ratio_iqr'][0]:.2f}-{w['ratio_iqr'][1]:.2f}) | {c['open_and_first_get_ms']:.1f} "
            f"| {c['unwrap_ms']:.3f} | {c['make_provider_ms']:.1f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def cpu_note() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, load average {load:.1f} at the end of the run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: small counts, few rounds")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "providers.json")
    args = parser.parse_args()
    # A terminated run still stops the servers it started (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="skv-bench-providers-") as tmp:
        directory = Path(tmp)
        with services(directory) as factories:
            results = {
                "warm": warm(factories, directory, args.quick),
                "cold": cold(factories, directory, args.quick),
                "rotation": rotation(factories, directory, args.quick),
            }
    results["machine"] = cpu_note()
    if not args.quick:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(results["machine"])


if __name__ == "__main__":
    main()
