"""AwsKmsMasterKey over AWS KMS's HTTP API, as served by moto's server mode.

moto is a stand-in for AWS KMS (which cannot run here): a real HTTP server on a local
port that boto3 talks to over the network exactly as to AWS.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid

import pytest
from botocore.exceptions import ClientError

from secure_kv import SecureStore
from secure_kv.errors import ConfigurationError, MasterKeyError
from secure_kv.keys import AwsKmsMasterKey, provider_from_settings
from secure_kv.keys.aws_kms import CONTEXT_KEY
from secure_kv.settings import load_settings

from .services import Kms


def test_the_associated_data_is_the_encryption_context(kms: Kms) -> None:
    key_id = kms.create_key()
    key = AwsKmsMasterKey(key_id).current_key()
    wrapped = key.wrap(b"k" * 32, b"workspace-ad")[9:]  # after the format byte and key tag
    client = kms.client()
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        client.decrypt(CiphertextBlob=wrapped, KeyId=key_id)  # no context: KMS refuses
    context = {CONTEXT_KEY: base64.urlsafe_b64encode(b"workspace-ad").decode()}
    assert (
        client.decrypt(CiphertextBlob=wrapped, KeyId=key_id, EncryptionContext=context)["Plaintext"]
        == b"k" * 32
    )


def test_an_alias_an_arn_and_a_key_id_are_the_same_master_key(kms: Kms) -> None:
    alias = f"alias/secure-kv-same-{uuid.uuid4().hex[:8]}"
    key_id = kms.create_key(alias=alias)
    arn = kms.client().describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    ids = {AwsKmsMasterKey(name).current_key().kek_id for name in (key_id, arn, alias)}
    assert len(ids) == 1


def test_the_store_runs_on_kms_from_settings_in_the_library_and_the_cli(
    kms: Kms, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "aws-kms")
    alias = f"alias/secure-kv-settings-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SECURE_KV_AWS_KMS_KEY_ID", alias)
    kms.create_key(alias=alias)
    with SecureStore.open(sqlite_url) as store:
        store.workspace("w").set("k", b"v")
    env = {**os.environ, "SECURE_KV_DATABASE_URL": sqlite_url}
    shown = subprocess.run(
        [sys.executable, "-m", "secure_kv", "get", "w", "k"], env=env, capture_output=True, check=True
    )
    assert shown.stdout == b"v"


def test_an_unknown_key_names_the_key_and_what_to_check(kms: Kms, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "aws-kms")
    monkeypatch.setenv("SECURE_KV_AWS_KMS_KEY_ID", "alias/does-not-exist")
    with pytest.raises(MasterKeyError, match=r"no key alias/does-not-exist .*SECURE_KV_AWS_KMS_KEY_ID"):
        provider_from_settings(load_settings())


def test_the_provider_needs_a_key_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECURE_KV_KEY_PROVIDER", "aws-kms")
    with pytest.raises(ConfigurationError, match="SECURE_KV_AWS_KMS_KEY_ID"):
        provider_from_settings(load_settings())


def test_a_kms_that_accepts_but_never_answers_fails_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A black-holed endpoint (connections accepted, nothing answered) ends in a
    MasterKeyError after the bounded read timeout and retries, not a hang."""
    import socket
    import threading

    from secure_kv.keys import aws_kms

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setattr(aws_kms, "READ_TIMEOUT", 0.5)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(MasterKeyError, match=r"unreachable \(ReadTimeoutError\)"):
            AwsKmsMasterKey("alias/any", region="us-east-1", endpoint_url=endpoint)
        assert len(accepted) == aws_kms.MAX_ATTEMPTS  # each attempt timed out, then it gave up
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
