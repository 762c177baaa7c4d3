"""The tool provider: checks the credentials a Dify workspace enters."""

from __future__ import annotations

from typing import Any

from dify_plugin import ToolProvider
from dify_plugin.errors.tool import ToolProviderCredentialValidationError

from secure_kv.errors import SecureKVError
from secure_kv.keys import EnvMasterKey


def master_key_from(credentials: dict[str, Any]) -> EnvMasterKey:
    """The tenant's master key, from the provider's ``secret-input`` credential."""
    return EnvMasterKey({"SECURE_KV_MASTER_KEY": str(credentials.get("secure_kv_master_key") or "")})


class SecureSearchProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        try:
            master_key_from(credentials)
        except SecureKVError as error:  # the message says the fix, never the key
            raise ToolProviderCredentialValidationError(str(error)) from None
        if not str(credentials.get("api_base_url") or "").startswith(("https://", "http://")):
            raise ToolProviderCredentialValidationError("api_base_url must be an http(s) URL")
