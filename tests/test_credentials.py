"""Credential detection: a table of true and false positives, and the three policies.

Token-shaped test values are built at run time from a seeded generator, so no
credential-shaped string sits in the repository for secret scanners to trip over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import string
import uuid

import pytest

from secure_kv import Category, SecureStore
from secure_kv.credentials import MAX_SCAN_BYTES, RULES, find_credential
from secure_kv.errors import InvalidInputError
from secure_kv.keys import StaticMasterKey

_rng = random.Random(20261125)
ALNUM = string.ascii_letters + string.digits
LOWER_HEX = "0123456789abcdef"
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def rand(n: int, alphabet: str = ALNUM) -> str:
    text = "".join(_rng.choice(alphabet) for _ in range(n))
    if alphabet == ALNUM:  # like real keys: letters and digits both present
        text = text[:-2] + "7" + "k"
    return text


PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(rand(64) for _ in range(5))
    + "\n-----END RSA PRIVATE KEY-----\n"
)
JWT = ".".join(
    base64.urlsafe_b64encode(part).decode().rstrip("=")
    for part in (
        b'{"alg":"HS256","typ":"JWT"}',
        b'{"sub":"1234567890","name":"John"}',
        hashlib.sha256(b"s").digest(),
    )
)

TRUE_POSITIVES = {
    "openai-project-key": f"sk-proj-{rand(120, ALNUM + '_-')}",
    "openai-style-api-key": f"sk-{rand(48)}",
    "anthropic-api-key": f"sk-ant-api03-{rand(93, ALNUM + '_-')}AA",
    "google-api-key": f"AIza{rand(35, ALNUM + '_-')}",
    "github-token": f"ghp_{rand(36)}",
    "github-fine-grained-token": f"github_pat_{rand(22)}_{rand(59)}",
    "gitlab-token": f"glpat-{rand(20, ALNUM + '_-')}",
    "slack-token": f"xoxb-{rand(12, string.digits)}-{rand(13, string.digits)}-{rand(24)}",
    "slack-webhook-url": f"https://hooks.slack.com/services/T{rand(8)}/B{rand(8)}/{rand(24)}",
    "aws-access-key-id": f"AKIA{rand(16, BASE32)}",
    "stripe-secret-key": f"sk_live_{rand(24)}",
    "stripe-webhook-secret": f"whsec_{rand(32)}",
    "twilio-api-key": f"SK{rand(32, LOWER_HEX)}",
    "sendgrid-api-key": f"SG.{rand(22, ALNUM + '_-')}.{rand(43, ALNUM + '_-')}",
    "huggingface-token": f"hf_{rand(34, string.ascii_letters)}",
    "azure-ad-client-secret": f"{rand(3)}8Q~{rand(34, ALNUM + '_~.-')}",
    "azure-storage-key": (
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={rand(86, ALNUM + '+/')}==;"
        "EndpointSuffix=core.windows.net"
    ),
    "private-key": PEM,
    "jwt": JWT,
    "url-with-password": f"postgresql://app:{rand(16)}@db.internal:5432/kv",
    "telegram-bot-token": f"{rand(10, string.digits)}:AA{rand(33, ALNUM + '_-')}",
    "authorization-header": f"Authorization: Bearer {rand(40)}",
    "secret-assignment": f"DB_HOST=db\nDB_PASSWORD=Xk9#mP2$vL7q{rand(4)}\n",
    "high-entropy-string": rand(40, ALNUM + "+/"),  # e.g. an AWS secret access key alone
    "npm-token": f"npm_{rand(36)}",
    "groq-api-key": f"gsk_{rand(52)}",
    "digitalocean-token": f"dop_v1_{rand(64, LOWER_HEX)}",
}
# Wrapped in the places plugins keep them: .env lines, JSON settings, headers.
EMBEDDED = {
    "openai-style-api-key": f"OPENAI_API_KEY=sk-{rand(48)}\n",
    "github-token": json.dumps({"github": {"token": f"ghp_{rand(36)}", "owner": "acme"}}),
    "private-key": json.dumps({"type": "service_account", "private_key": PEM, "client_email": "a@b.iam"}),
    "secret-assignment": json.dumps({"api_key": f"{rand(24)}", "region": "eu"}),
}

PNG_1x1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
FALSE_POSITIVES = {
    "uuid": str(uuid.UUID(int=_rng.getrandbits(128))),
    "sha256 hex": hashlib.sha256(b"x").hexdigest(),
    "git sha": hashlib.sha1(b"x").hexdigest(),
    "hashes in JSON": json.dumps(
        {"sha256": hashlib.sha256(b"a").hexdigest(), "etag": hashlib.md5(b"a").hexdigest(), "size": 1234}
    ),
    "base64 PNG": PNG_1x1,
    "data URL image": "data:image/png;base64," + PNG_1x1 * 8,
    "English prose": (
        "Please reset your password: open the settings page and choose a new one. "
        "The token counter shows how many tokens the model used; the key idea is simple."
    ),
    "JSON settings": json.dumps({"theme": "dark", "language": "en", "max_tokens": 4096, "auth": "oauth2"}),
    "snake_case identifier": "user_preferred_language_setting",
    "camelCase identifier": "thisIsAVeryLongVariableName2",
    "ULID": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "path": "/usr/local/lib/python3.11/site-packages/secure_kv/__init__.py",
    "URL": "https://example.com/search?q=weather&lang=en&page=2",
    "email": "john.doe+plugins@example.com",
    "short word": "John",
    "number": "12345678901234567890",
    "version": "v1.2.3-beta.4+build.567",
    "placeholder assignment": "OPENAI_API_KEY=<your-key-here>\nPASSWORD=changeme\n",
    "markdown": "# Notes\n\n- buy milk\n- call Anna about the key handover on 2026-12-01\n",
}


@pytest.mark.parametrize(("rule", "value"), sorted(TRUE_POSITIVES.items()))
def test_credentials_are_found_by_their_rule(rule: str, value: str) -> None:
    assert find_credential(value.encode()) == rule


@pytest.mark.parametrize(("rule", "value"), sorted(EMBEDDED.items()))
def test_credentials_embedded_in_configuration_are_found(rule: str, value: str) -> None:
    assert find_credential(value.encode()) == rule


@pytest.mark.parametrize(("what", "value"), sorted(FALSE_POSITIVES.items()))
def test_ordinary_values_are_not_flagged(what: str, value: str) -> None:
    assert find_credential(value.encode()) is None


def test_binary_and_oversized_values_are_not_scanned() -> None:
    assert find_credential(base64.b64decode(PNG_1x1)) is None
    assert find_credential(b"\x00\x01" + f"ghp_{rand(36)}".encode()) is None
    assert find_credential(f"ghp_{rand(36)} ".encode() + b" " * MAX_SCAN_BYTES) is None


def test_the_rule_set_is_broad() -> None:
    providers = {name.split("-")[0] for name, _, _ in RULES}
    assert len(RULES) >= 100
    for provider in ("openai", "anthropic", "github", "gitlab", "slack", "aws", "google", "stripe", "twilio"):
        assert provider in providers
    for provider in ("sendgrid", "huggingface", "azure"):
        assert provider in providers


@pytest.fixture
def token_value() -> bytes:
    return f"ghp_{rand(36)}".encode()


def test_warn_logs_the_workspace_and_key_never_the_value(
    sqlite_url: str, master_key: StaticMasterKey, token_value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key) as store, caplog.at_level(logging.DEBUG):
        ws = store.workspace("tenant-1")
        ws.set("github", token_value)
        assert ws.get("github") == token_value
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'github'" in m and "'tenant-1'" in m and "github-token" in m for m in warnings)
    assert all(token_value.decode() not in r.getMessage() for r in caplog.records)


def test_promote_stores_the_value_as_a_token(
    sqlite_url: str, master_key: StaticMasterKey, token_value: bytes
) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key, credential_policy="promote") as store:
        ws = store.workspace("w")
        ws.set("github", token_value, category=Category.PREFERENCE)
        ws.set("name", b"John")
        with store._db.connect() as connection:
            categories = dict(
                connection.exec_driver_sql("SELECT record_key, category FROM skv_records").all()
            )
    assert {bytes(k).decode(): v for k, v in categories.items()} == {"github": "token", "name": "preference"}


def test_reject_raises_and_stores_nothing(
    sqlite_url: str, master_key: StaticMasterKey, token_value: bytes
) -> None:
    with SecureStore.open(sqlite_url, master_key=master_key, credential_policy="reject") as store:
        ws = store.workspace("w")
        with pytest.raises(InvalidInputError, match="looks like a credential") as raised:
            ws.set("github", token_value, category=Category.CACHE)
        assert token_value.decode() not in str(raised.value)
        assert ws.get("github") is None
        ws.set("github", token_value, category=Category.TOKEN)  # the right category is fine
        assert ws.get("github") == token_value


# --- Work done on crafted values (issue 10, finding 11) ------------------------------------

CRAFTED = {
    "key=K1": "key=K1",
    "pwd:K1": "pwd:K1",
    "overlapping-words": "passkey=secret_token1",
    "quoted-json": '"api_key": "K1", ',
}


@pytest.mark.parametrize("unit", CRAFTED.values(), ids=CRAFTED.keys())
def test_the_assignment_scan_judges_each_character_at_most_once(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: every occurrence of every word was followed by its own value of up to 200
    # characters, so `key=K1` repeated to 16 KiB had ~550,000 characters judged (0.17 s of
    # CPU holding the GIL, per entry of a set_many). Counted here, not timed.
    from secure_kv import credentials

    judged: list[int] = []
    looks_random = credentials._looks_random

    def counting(text: str, *, minimum: int) -> bool:
        judged.append(len(text))
        return looks_random(text, minimum=minimum)

    monkeypatch.setattr(credentials, "_looks_random", counting)
    value = (unit * (MAX_SCAN_BYTES // len(unit) + 1))[:MAX_SCAN_BYTES]
    find_credential(value.encode())
    assert sum(judged) <= len(value)


def test_values_over_the_scan_cap_are_not_scanned_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_kv import credentials

    monkeypatch.setattr(credentials, "_scan", lambda text: pytest.fail("scanned"))
    assert find_credential(("key=K1" * 3000).encode()[: MAX_SCAN_BYTES + 1]) is None
