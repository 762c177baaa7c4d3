"""Providers found by name through the entry-point group ``secure_kv.key_providers``.

The third-party provider here is a real distribution (a dist-info with entry_points.txt)
on sys.path, found by importlib.metadata exactly as an installed package would be.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from secure_kv import SecureStore
from secure_kv.cli import main
from secure_kv.errors import ConfigurationError
from secure_kv.keys import ENTRY_POINT_GROUP, EnvMasterKey, available_providers, load_provider
from secure_kv.keys.base import generate_master_key
from secure_kv.settings import load_settings

THIRD_PARTY = '''
import base64
import os
import re

from secure_kv.keys import StaticMasterKey


class DemoVaultMasterKey(StaticMasterKey):
    """A third party's provider: its key comes from its own setting."""

    @classmethod
    def from_settings(cls, settings, *, create=False):
        return cls(base64.urlsafe_b64decode(os.environ["DEMO_VAULT_KEY"]))


def not_a_provider(settings, *, create=False):
    return "a string"


class Hijack(DemoVaultMasterKey):
    pass
'''


def _install_distribution(directory: Path) -> Path:
    """Lay out a package and its dist-info, as pip would install it."""
    (directory / "demo_vault_skv").mkdir(parents=True)
    (directory / "demo_vault_skv" / "__init__.py").write_text(THIRD_PARTY)
    info = directory / "demo_vault_skv-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-vault-skv\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "demo-vault = demo_vault_skv:DemoVaultMasterKey\n"
        "broken-vault = demo_vault_skv:not_a_provider\n"
        "env = demo_vault_skv:Hijack\n"
    )
    return directory


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = _install_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("DEMO_VAULT_KEY", generate_master_key())
    return site


def test_the_built_in_providers_are_registered_as_entry_points() -> None:
    from importlib.metadata import entry_points

    declared = {point.name for point in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"env", "file", "keyring", "pkcs11", "aws-kms"} <= declared


def test_a_third_party_provider_is_chosen_by_name_in_the_library(
    third_party: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "demo-vault" in available_providers()
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "demo-vault")
    with SecureStore.open(sqlite_url) as store:
        store.workspace("w").set("k", b"from a third party")
        kek_id = store.kek_id
    key = base64.urlsafe_b64decode(os.environ["DEMO_VAULT_KEY"])
    from secure_kv.keys import StaticMasterKey

    assert StaticMasterKey(key).current_key().kek_id == kek_id


def test_a_third_party_provider_is_chosen_by_name_in_the_cli(
    third_party: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(third_party), os.environ.get("PYTHONPATH", "")]),
        "SECURE_KV_KEY_PROVIDER": "demo-vault",
        "SECURE_KV_DATABASE_URL": sqlite_url,
    }
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "demo-vault")
    initialised = CliRunner().invoke(main, ["--database-url", sqlite_url, "init"])  # in this process
    assert initialised.exit_code == 0, initialised.output
    cli = [sys.executable, "-m", "secure_kv"]  # a process of its own finds the entry point too
    subprocess.run([*cli, "set", "w", "k"], input=b"via the CLI", env=env, check=True, capture_output=True)
    shown = subprocess.run([*cli, "get", "w", "k"], env=env, check=True, capture_output=True)
    assert shown.stdout == b"via the CLI"
    with pytest.raises(subprocess.CalledProcessError) as failed:
        subprocess.run(
            [*cli, "get", "w", "k"],
            env={**env, "SECURE_KV_KEY_PROVIDER": "nope"},
            check=True,
            capture_output=True,
            text=True,
        )
    assert "unknown key provider 'nope'" in failed.value.stderr and "demo-vault" in failed.value.stderr


def test_an_unknown_provider_lists_the_registered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown key provider 'vault'.*aws-kms, env, file, keyring"
    ):
        load_provider("vault", load_settings())


def test_a_third_party_cannot_take_over_a_built_in_name(
    third_party: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_MASTER_KEY", generate_master_key())
    provider = load_provider("env", load_settings())
    assert type(provider) is EnvMasterKey


def test_an_entry_point_that_makes_no_provider_is_refused(third_party: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"returned str, not a secure_kv\.keys\.MasterKeyProvider"):
        load_provider("broken-vault", load_settings())


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [("pkcs11", "pkcs11", "secure-kv[hsm]"), ("aws-kms", "boto3", "secure-kv[aws]")],
)
def test_a_provider_whose_extra_is_not_installed_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    monkeypatch.setenv("SECURE_KV_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
    monkeypatch.setenv("SECURE_KV_PKCS11_TOKEN_LABEL", "t")
    monkeypatch.setenv("SECURE_KV_PKCS11_KEY_LABEL", "k")
    monkeypatch.setenv("SECURE_KV_PKCS11_PIN", "0000")
    monkeypatch.setenv("SECURE_KV_AWS_KMS_KEY_ID", "alias/k")
    with pytest.raises(ConfigurationError, match=re.escape(f"pip install '{extra}'")):
        load_provider(name, load_settings())
