"""The tool: a per-user API token and cached results, encrypted in Dify's plugin storage.

First call with ``api_token``: the token is stored as a secure_kv ``token`` record. Later
calls read it back, so the user gives it once. Each result is kept as a ``cache`` record
for five minutes; a repeated query is answered from it without calling the API. Everything
goes through :class:`~secure_kv.integrations.dify.EncryptedStorage`, so Dify's storage
(files or objects, in plaintext) only ever holds ciphertext.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from typing import Any

import httpx
from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage
from tenant_key import tenant_master_key

from secure_kv import Category
from secure_kv.integrations.dify import EncryptedStorage

CACHE_SECONDS = 300


class SecureSearchTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        credentials = self.runtime.credentials
        # The workspace's own master key (a secret-input credential): it binds the tenant.
        storage = EncryptedStorage(self.session.storage, master_key=tenant_master_key(credentials))
        user = self.runtime.user_id or "anonymous"
        token_key = f"tokens/{user}"

        given = tool_parameters.get("api_token")
        if given:
            storage.set(token_key, str(given).encode(), category=Category.TOKEN)
        token = storage.get(token_key)  # bytes, or None when never given
        if token is None:
            yield self.create_text_message(
                "No API token stored for you yet: run the tool once with api_token."
            )
            return

        query = str(tool_parameters["query"])
        cache_key = f"cache/{user}/{hashlib.sha256(query.encode()).hexdigest()}"
        cached = storage.get(cache_key)  # None when missing or expired
        if cached is not None:
            yield self.create_json_message({"query": query, "cached": True, "result": json.loads(cached)})
            return

        response = httpx.get(
            f"{str(credentials['api_base_url']).rstrip('/')}/search",
            params={"q": query},
            headers={"Authorization": f"Bearer {token.decode()}"},
            timeout=30,
        )
        response.raise_for_status()
        result = response.json()
        storage.set(cache_key, json.dumps(result).encode(), category=Category.CACHE, ttl=CACHE_SECONDS)
        yield self.create_json_message({"query": query, "cached": False, "result": result})
