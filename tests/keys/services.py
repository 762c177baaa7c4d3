"""The real key services the provider tests run against, started and stopped by the tests.

- SoftHSM2: a real PKCS#11 token, one token directory and one token per test;
- moto's server mode: a real HTTP server answering AWS KMS's API, the *stand-in* for AWS
  KMS (which cannot run here); boto3 talks to it over the network as to AWS;
- gnome-keyring-daemon: the real freedesktop Secret Service, in a D-Bus session bus of the
  tests' own, unlocked with a test password on stdin; ``keyring`` reaches it through its
  SecretService backend (secretstorage over jeepney).

A part that is missing skips the tests here, and fails them under CI=true.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

SOFTHSM_MODULE = os.environ.get("SECURE_KV_TEST_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
HSM_PIN = "4321-test-pin"
KEYRING_PASSWORD = "test-keyring-password"


def missing(part: str, why: str) -> None:
    """Skip locally, fail in CI: CI must run every provider test."""
    message = f"{part} unavailable: {why}"
    if IN_CI:
        pytest.fail(f"{message}; CI must run every key-provider test", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(what: str, ready: Any, process: subprocess.Popen[Any] | None = None, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            missing(what, f"exited with status {process.returncode}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.1)
    missing(what, f"not ready after {seconds:.0f} s")


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- SoftHSM2 -----------------------------------------------------------------------------


@dataclass
class SoftHsm:
    """One SoftHSM2 token in a token directory of its own."""

    module: str
    token_label: str
    pin: str
    directory: Path

    def environ(self, key_label: str) -> dict[str, str]:
        """The settings that select this token for ``SECURE_KV_KEY_PROVIDER=pkcs11``.

        The PIN goes through a file, as the docs recommend."""
        pin_file = self.directory / "pin"
        pin_file.write_text(self.pin + "\n")
        pin_file.chmod(0o600)
        return {
            "SECURE_KV_PKCS11_MODULE": self.module,
            "SECURE_KV_PKCS11_TOKEN_LABEL": self.token_label,
            "SECURE_KV_PKCS11_KEY_LABEL": key_label,
            "SECURE_KV_PKCS11_PIN_FILE": str(pin_file),
        }

    def provider(self, *labels: str) -> Any:
        """A provider over keys ``labels`` (current first), each generated in the token."""
        from secure_kv.keys import Pkcs11MasterKey

        for label in labels:
            Pkcs11MasterKey(self.module, self.token_label, [label], self.pin, create=True)
        return Pkcs11MasterKey(self.module, self.token_label, list(labels), self.pin)


def create_softhsm(directory: Path, environ: Any = os.environ) -> SoftHsm:
    """A SoftHSM2 token directory under ``directory`` with one token; points
    ``environ["SOFTHSM2_CONF"]`` at its config (the module reads it when initialised)."""
    if not Path(SOFTHSM_MODULE).is_file() or shutil.which("softhsm2-util") is None:
        missing("SoftHSM2", f"{SOFTHSM_MODULE} or softhsm2-util not installed (Debian: softhsm2)")
    (directory / "tokens").mkdir(parents=True)
    config = directory / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    environ["SOFTHSM2_CONF"] = str(config)
    label = "skv-" + uuid.uuid4().hex[:8]
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", HSM_PIN, "--so-pin", "so-1"],
        check=True,
        capture_output=True,
        env={**os.environ, "SOFTHSM2_CONF": str(config)},
    )
    return SoftHsm(SOFTHSM_MODULE, label, HSM_PIN, directory)


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    """A fresh SoftHSM2 token directory (SOFTHSM2_CONF -> a temp config) with one token."""
    monkeypatch.setenv("SOFTHSM2_CONF", "")  # restored after the test
    return create_softhsm(tmp_path / "softhsm")


# --- moto's server mode (the stand-in for AWS KMS) ---------------------------------------


_MOTO_MAIN = "from moto.server import main; main()"


@dataclass
class MotoServer:
    """``moto_server`` as a subprocess on a free local port: AWS KMS's HTTP API, not AWS."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_MAIN, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        _wait("moto server (the stand-in for AWS KMS)", ready, self.process)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)


def _moto_importable() -> None:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as error:
        missing("moto server", f"{error} (pip install 'secure-kv[dev]')")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session (tests that stop a server start their own)."""
    _moto_importable()
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@dataclass
class Kms:
    """boto3 pointed at a moto server through the usual AWS settings."""

    server: MotoServer

    def client(self) -> Any:
        import boto3

        return boto3.client("kms", region_name="us-east-1", endpoint_url=self.server.endpoint)

    def create_key(self, alias: str | None = None) -> str:
        key_id = str(self.client().create_key(Description="secure_kv test")["KeyMetadata"]["KeyId"])
        if alias is not None:
            self.client().create_alias(AliasName=alias, TargetKeyId=key_id)
        return key_id


def moto_environ(server: MotoServer) -> dict[str, str | None]:
    """Every AWS SDK setting pointed at ``server``, with dummy credentials (moto checks none);
    ``None``: unset."""
    return {
        "AWS_PROFILE": None,
        "AWS_DEFAULT_PROFILE": None,
        "AWS_SESSION_TOKEN": None,
        "AWS_ENDPOINT_URL": None,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_KMS": server.endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def use_moto(monkeypatch: pytest.MonkeyPatch, server: MotoServer) -> Kms:
    """Point the AWS settings of this test at ``server``."""
    for name, value in moto_environ(server).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return Kms(server)


@pytest.fixture
def kms(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Kms:
    return use_moto(monkeypatch, moto_server)


@pytest.fixture
def own_moto_server() -> Iterator[MotoServer]:
    """A moto server of this test's own, which the test may stop."""
    _moto_importable()
    server = MotoServer()
    server.start()
    yield server
    server.stop()


# --- gnome-keyring in a D-Bus session of the tests' own ------------------------------------

# No <servicedir>: a stopped gnome-keyring is not started again by D-Bus activation, so a
# test that stops it sees the keyring gone, as on a host whose keyring died.
_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclass
class SecretService:
    """A D-Bus session bus and a gnome-keyring-daemon on it, unlocked with a test password."""

    home: Path
    bus: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    address: str = ""

    def environ(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_RUNTIME_DIR": str(self.home / "run"),
            "DBUS_SESSION_BUS_ADDRESS": self.address,
        }

    def start(self) -> None:
        for name in ("dbus-daemon", "gnome-keyring-daemon"):
            if shutil.which(name) is None:
                missing("Secret Service", f"{name} not installed (Debian: dbus, gnome-keyring)")
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        (self.home / "run").mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self.home / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=self.home / "run" / "bus"))
        self.bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.environ(),
        )
        assert self.bus.stdout is not None
        self.address = self.bus.stdout.readline().decode().strip()
        if not self.address:
            missing("Secret Service", "dbus-daemon printed no address")
        self.start_keyring()

    def start_keyring(self) -> None:
        self.daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.environ(),
        )
        assert self.daemon.stdin is not None
        self.daemon.stdin.write(KEYRING_PASSWORD.encode())
        self.daemon.stdin.close()

        def ready() -> bool:
            with self.connection() as connection:
                import secretstorage

                return not secretstorage.get_default_collection(connection).is_locked()

        _wait("gnome-keyring-daemon", ready, self.daemon)

    def stop_keyring(self) -> None:
        if self.daemon is not None:
            _stop(self.daemon)

    def stop(self) -> None:
        self.stop_keyring()
        if self.bus is not None:
            _stop(self.bus)

    def connection(self) -> Any:
        from jeepney.io.blocking import open_dbus_connection

        return open_dbus_connection(self.address)

    def clear(self) -> None:
        """Delete every item, so each test starts from an empty keyring."""
        import secretstorage

        with self.connection() as connection:
            for item in secretstorage.get_default_collection(connection).get_all_items():
                item.delete()


@pytest.fixture(scope="session")
def secret_service_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretService]:
    try:
        import secretstorage  # noqa: F401
    except ImportError as error:
        missing("Secret Service", f"{error} (pip install secretstorage)")
    service = SecretService(tmp_path_factory.mktemp("secret-service"))
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture
def secret_service(secret_service_session: SecretService, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """keyring's real SecretService backend, installed, talking to the tests' gnome-keyring."""
    import keyring
    from keyring.backends.SecretService import Keyring as SecretServiceKeyring

    service = secret_service_session
    if service.daemon is None or service.daemon.poll() is not None:
        service.start_keyring()
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", service.address)
    service.clear()
    previous = keyring.get_keyring()
    backend = SecretServiceKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)
