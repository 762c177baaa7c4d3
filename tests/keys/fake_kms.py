"""FakeKms: a stand-in for a cloud KMS (which cannot run here), named as such.

It shows the shape a KMS provider takes: the key material stays inside the "service"
object; the provider only asks it to encrypt and decrypt small secrets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_kv.errors import AuthenticationError
from secure_kv.keys import MasterKey, MasterKeyProvider


class FakeKmsService:
    """Holds keys by id and encrypts with them, as a KMS does; never hands a key out."""

    def __init__(self) -> None:
        self._keys: dict[str, AESGCM] = {}

    def create_key(self) -> str:
        key_id = "fake-kms-" + os.urandom(6).hex()
        self._keys[key_id] = AESGCM(AESGCM.generate_key(bit_length=256))
        return key_id

    def encrypt(self, key_id: str, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._keys[key_id].encrypt(nonce, plaintext, context)

    def decrypt(self, key_id: str, blob: bytes, context: bytes) -> bytes:
        return self._keys[key_id].decrypt(blob[:12], blob[12:], context)


class FakeKmsKey(MasterKey):
    def __init__(self, service: FakeKmsService, key_id: str) -> None:
        self._service = service
        self._key_id = key_id

    @property
    def kek_id(self) -> str:
        return self._key_id

    def wrap(self, plaintext: bytes, associated_data: bytes) -> bytes:
        return self._service.encrypt(self._key_id, plaintext, associated_data)

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        try:
            return self._service.decrypt(self._key_id, wrapped, associated_data)
        except (InvalidTag, ValueError):
            raise AuthenticationError("wrapped key failed authentication") from None


class FakeKmsMasterKey(MasterKeyProvider):
    def __init__(self, service: FakeKmsService, current: str, previous: Sequence[str] = ()) -> None:
        self._current = FakeKmsKey(service, current)
        self._previous = [FakeKmsKey(service, key_id) for key_id in previous]

    def current_key(self) -> MasterKey:
        return self._current

    def previous_keys(self) -> Sequence[MasterKey]:
        return tuple(self._previous)
