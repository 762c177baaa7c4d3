"""Master keys in AWS KMS, through boto3: the key never leaves KMS.

Data keys are wrapped with KMS ``Encrypt`` and unwrapped with ``Decrypt``; the associated
data travels as the *encryption context* ``{"secure_kv:ad": base64url(associated data)}``,
which KMS binds to the ciphertext exactly as AES-GCM binds its AAD (and writes to
CloudTrail, so what a decrypt was for is audited there too).

Wrapped layout (version 1): ``0x01 || key tag (8 bytes) || KMS CiphertextBlob``, where the
key tag is the first 8 bytes of SHA-256 over the key's ARN: a blob of another key is
refused here as not authentic, without a call (AWS would answer IncorrectKeyException).

The key is named by ``SECURE_KV_AWS_KMS_KEY_ID`` (key id, ARN or alias; comma-separated:
current first, previous after). Region, endpoint and credentials come from the usual AWS
settings (``AWS_REGION``, ``AWS_ENDPOINT_URL_KMS``/``AWS_ENDPOINT_URL``, profiles, roles),
as for any boto3 client. Calls have bounded connect and read timeouts and at most
``MAX_ATTEMPTS`` attempts, so an unreachable KMS fails in seconds rather than hanging.

``kek_id`` is ``kms-`` and 16 hex digits of SHA-256 over the key's ARN, which
``DescribeKey`` resolves once (an alias moved to another key gives another ``kek_id``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from secure_kv.errors import AuthenticationError, ConfigurationError, MasterKeyError, UnsupportedVersionError
from secure_kv.keys.base import MasterKey, MasterKeyProvider

if TYPE_CHECKING:
    from secure_kv.settings import Settings

__all__ = ["AwsKmsMasterKey"]

CONTEXT_KEY = "secure_kv:ad"
_FORMAT = 1
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
MAX_ATTEMPTS = 2

_loader: Any = None

_INSTALL = "the aws-kms provider needs boto3: pip install 'secure-kv[aws]'"
_IAM_HINT = (
    "the caller needs kms:Encrypt, kms:Decrypt and kms:DescribeKey on the key (docs/key-management.md)"
)


def _client(region: str | None, endpoint_url: str | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigurationError(_INSTALL) from None
    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    global _loader
    try:
        import botocore.session
        from botocore.loaders import create_loader

        # A fresh session per provider reads credentials and settings as they are now; the
        # service model files, which never change, are parsed once per process (~0.3 s each).
        core = botocore.session.get_session()
        _loader = _loader or create_loader()
        core.register_component("data_loader", _loader)
        return boto3.session.Session(botocore_session=core).client(
            "kms", region_name=region, endpoint_url=endpoint_url, config=config
        )
    except Exception as error:  # botocore raises NoRegionError and others at client creation
        raise MasterKeyError(
            f"cannot make an AWS KMS client ({type(error).__name__}): set AWS_REGION "
            "(and credentials) as for any AWS SDK"
        ) from None


class _Kms:
    """Turns botocore's failures into one-line errors that say what to check."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.endpoint = str(getattr(client.meta, "endpoint_url", "AWS KMS"))

    def call(self, operation: str, key_id: str, **arguments: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            result: dict[str, Any] = getattr(self.client, operation)(**arguments)
            return result
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "unknown"))
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise AuthenticationError("wrapped key failed authentication") from None
            if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"):
                raise MasterKeyError(
                    f"AWS KMS denied {operation} on {key_id} ({code}): {_IAM_HINT}"
                ) from None
            if code == "NotFoundException":
                raise MasterKeyError(
                    f"AWS KMS has no key {key_id} at {self.endpoint}: "
                    "check SECURE_KV_AWS_KMS_KEY_ID and AWS_REGION"
                ) from None
            if code in ("DisabledException", "KMSInvalidStateException"):
                raise MasterKeyError(
                    f"AWS KMS key {key_id} is disabled or pending deletion ({code}): enable it"
                ) from None
            raise MasterKeyError(f"AWS KMS {operation} failed on {key_id} ({code})") from None
        except NoCredentialsError:
            raise MasterKeyError(
                "no AWS credentials for KMS: set them as for any AWS SDK (role, profile, AWS_ACCESS_KEY_ID)"
            ) from None
        except BotoCoreError as error:
            raise MasterKeyError(
                f"AWS KMS at {self.endpoint} is unreachable ({type(error).__name__}): check the network, "
                "AWS_REGION and AWS_ENDPOINT_URL_KMS"
            ) from None


class AwsKmsKey(MasterKey):
    """One KMS key. ``Encrypt``/``Decrypt`` run in KMS; this object holds only the ARN."""

    def __init__(self, kms: _Kms, key_id: str) -> None:
        self._kms = kms
        described = kms.call("describe_key", key_id, KeyId=key_id)
        metadata = described["KeyMetadata"]
        if metadata.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
            raise MasterKeyError(
                f"AWS KMS key {key_id} is not a symmetric encryption key (SYMMETRIC_DEFAULT)"
            )
        self.arn = str(metadata["Arn"])
        digest = hashlib.sha256(self.arn.encode()).digest()
        self._kek_id = "kms-" + digest[:8].hex()
        self._tag = digest[:8]

    @property
    def kek_id(self) -> str:
        return self._kek_id

    @staticmethod
    def _context(associated_data: bytes) -> dict[str, str]:
        return {CONTEXT_KEY: base64.urlsafe_b64encode(associated_data).decode("ascii")}

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        result = self._kms.call(
            "encrypt",
            self.arn,
            KeyId=self.arn,
            Plaintext=plaintext,
            EncryptionContext=self._context(associated_data),
        )
        return bytes([_FORMAT]) + self._tag + bytes(result["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        if wrapped and wrapped[0] > _FORMAT:
            raise UnsupportedVersionError(
                f"wrapped key has format {wrapped[0]}, newer than this secure_kv reads ({_FORMAT}): "
                "upgrade secure_kv"
            )
        header = 1 + len(self._tag)
        if (
            len(wrapped) <= header
            or wrapped[0] != _FORMAT
            or not hmac.compare_digest(wrapped[1:header], self._tag)
        ):
            raise AuthenticationError("wrapped key is malformed or wrapped by another key")
        # KeyId pins the key: KMS refuses a ciphertext made under any other key.
        result = self._kms.call(
            "decrypt",
            self.arn,
            KeyId=self.arn,
            CiphertextBlob=wrapped[header:],
            EncryptionContext=self._context(associated_data),
        )
        return bytes(result["Plaintext"])


class AwsKmsMasterKey(MasterKeyProvider):
    """Master keys in AWS KMS: ``key_ids`` current first, previous after.

    ``client``: a boto3 KMS client (``None``: one from the usual AWS settings, with bounded
    timeouts and retries). Making the provider calls ``DescribeKey`` once per key.
    """

    def __init__(
        self,
        key_ids: str | Sequence[str],
        *,
        client: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        ids = [key_ids] if isinstance(key_ids, str) else list(key_ids)
        ids = [key_id.strip() for key_id in ids if key_id.strip()]
        if not ids:
            raise ConfigurationError("the aws-kms provider needs a key id (SECURE_KV_AWS_KMS_KEY_ID)")
        kms = _Kms(client if client is not None else _client(region, endpoint_url))
        self._keys = [AwsKmsKey(kms, key_id) for key_id in ids]

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> AwsKmsMasterKey:
        if not settings.aws_kms_key_id:
            raise ConfigurationError(
                "SECURE_KV_KEY_PROVIDER=aws-kms needs SECURE_KV_AWS_KMS_KEY_ID (key id, ARN or alias)"
            )
        # boto3 reads AWS_REGION/AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_KMS and AWS_ENDPOINT_URL
        # itself; AWS_REGION is passed explicitly because older botocore ignores it.
        return cls(settings.aws_kms_key_id.split(","), region=os.environ.get("AWS_REGION") or None)

    def current_key(self) -> MasterKey:
        return self._keys[0]

    def previous_keys(self) -> Sequence[MasterKey]:
        return tuple(self._keys[1:])
