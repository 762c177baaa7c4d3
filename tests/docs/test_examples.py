"""examples/dify-plugin: loaded by the real dify-plugin SDK, run against the daemon stand-in.

The SDK's own ``PluginRegistration`` reads the example's manifest and provider YAML
(validating them with its pydantic models) and imports the provider and tool classes from
the files they name, as a plugin process does at start. The tool then runs on real SDK
sessions whose storage requests go to tests/dify_daemon.py, and calls a real HTTP server
standing in for the upstream search API.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from secure_kv.keys.base import generate_master_key
from tests.conftest import IN_CI
from tests.dify_daemon import InMemoryDifyDaemon, import_sdk

try:
    import_sdk()
except ImportError:  # pragma: no cover - depends on the environment
    if IN_CI:
        raise
    pytest.skip("dify-plugin is not installed: pip install 'secure-kv[dify]'", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dify-plugin"
API_TOKEN = "sk-upstream-5f0c9e1d2b3a4c5d"


class SearchApi(ThreadingHTTPServer):
    """The upstream API: answers ``GET /search?q=`` for one bearer token, counting calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), _SearchHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SearchHandler(BaseHTTPRequestHandler):
    server: SearchApi

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)["q"][0]
        authorization = self.headers.get("Authorization", "")
        self.server.calls.append((query, authorization))
        if authorization != f"Bearer {API_TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"hits": [f"first hit for {query}", "second hit"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def search_api() -> Iterator[SearchApi]:
    server = SearchApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def registration(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The example as the SDK loads it in a plugin process (run from the plugin's directory)."""
    from dify_plugin import DifyPluginEnv
    from dify_plugin.core.plugin_registration import PluginRegistration

    monkeypatch.chdir(EXAMPLE)
    monkeypatch.syspath_prepend(str(EXAMPLE))  # `python -m main` puts the plugin's root there
    before = set(sys.modules)
    try:
        yield PluginRegistration(DifyPluginEnv())
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("provider", "tools", "tenant_key"):
                del sys.modules[name]


@pytest.fixture
def daemon() -> Iterator[InMemoryDifyDaemon]:
    running = InMemoryDifyDaemon()
    try:
        yield running
    finally:
        running.close()


def _invoke(
    tool_class: type, daemon: InMemoryDifyDaemon, credentials: dict[str, str], **parameters: Any
) -> Any:
    """One tool call in a new plugin process (a new SDK session) for user-1."""
    from dify_plugin.entities.tool import ToolRuntime

    session = daemon.connect()
    runtime = ToolRuntime(credentials=credentials, user_id="user-1", session_id=session.session_id)
    (message,) = tool_class(runtime=runtime, session=session).invoke(parameters)
    payload = message.message
    return payload.json_object if hasattr(payload, "json_object") else payload.text


def test_the_example_plugin_stores_its_token_encrypted_and_reuses_it(
    registration: Any, daemon: InMemoryDifyDaemon, search_api: SearchApi
) -> None:
    credentials = {"secure_kv_master_key": generate_master_key(), "api_base_url": search_api.url}
    registration.get_tool_provider_cls("secure_search")().validate_credentials(credentials)
    tool = registration.get_tool_cls("secure_search", "secure_search")

    assert _invoke(tool, daemon, credentials, query="vault") == (
        "No API token stored for you yet: run the tool once with api_token."
    )
    first = _invoke(tool, daemon, credentials, query="vault", api_token=API_TOKEN)
    assert first["cached"] is False and first["result"]["hits"][0] == "first hit for vault"
    # A later call, in another plugin process, without the token: it is read back.
    second = _invoke(tool, daemon, credentials, query="kms")
    assert second["cached"] is False
    assert search_api.calls == [("vault", f"Bearer {API_TOKEN}"), ("kms", f"Bearer {API_TOKEN}")]
    # The same query again: answered from the encrypted cache, no API call.
    third = _invoke(tool, daemon, credentials, query="kms")
    assert third == {**second, "cached": True}
    assert len(search_api.calls) == 2

    stored = b"".join(daemon.files.values())
    sent = "".join(request.value or "" for request in daemon.requests)
    for secret in (API_TOKEN.encode(), b"first hit for vault", b"first hit for kms"):
        assert secret not in stored  # Dify's storage holds ciphertext only
        assert secret.hex() not in sent  # and no request carried a plaintext value
    assert "tokens/user-1" in daemon.keys()


def test_the_example_provider_refuses_a_bad_master_key(registration: Any) -> None:
    from dify_plugin.errors.tool import ToolProviderCredentialValidationError

    provider = registration.get_tool_provider_cls("secure_search")()
    with pytest.raises(ToolProviderCredentialValidationError, match="secure-kv keygen") as refused:
        provider.validate_credentials({"secure_kv_master_key": "not-a-key", "api_base_url": "https://x"})
    assert "not-a-key" not in str(refused.value)


def test_the_example_tool_cannot_read_another_tenants_key(
    registration: Any, daemon: InMemoryDifyDaemon, search_api: SearchApi
) -> None:
    from secure_kv.errors import MasterKeyError

    tool = registration.get_tool_cls("secure_search", "secure_search")
    mine = {"secure_kv_master_key": generate_master_key(), "api_base_url": search_api.url}
    _invoke(tool, daemon, mine, query="vault", api_token=API_TOKEN)
    other = {**mine, "secure_kv_master_key": generate_master_key()}
    with pytest.raises(MasterKeyError):
        _invoke(tool, daemon, other, query="vault")
