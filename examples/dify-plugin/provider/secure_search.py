"""The tool provider: checks the credentials a Dify workspace enters."""

from __future__ import annotations

from typing import Any

from dify_plugin import ToolProvider
from dify_plugin.errors.tool import ToolProviderCredentialValidationError
from tenant_key import tenant_master_key

from secure_kv.errors import SecureKVError


class SecureSearchProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        try:
            tenant_master_key(credentials)
        except SecureKVError as error:  # the message says the fix, never the key
            raise ToolProviderCredentialValidationError(str(error)) from None
        if not str(credentials.get("api_base_url") or "").startswith(("https://", "http://")):
            raise ToolProviderCredentialValidationError("api_base_url must be an http(s) URL")
