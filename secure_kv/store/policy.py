"""The write policy, one rule for every storage (a SQL workspace, its batches and Dify's
``EncryptedStorage``): when an entry expires, and which category a credential-looking value
is stored under (``SECURE_KV_CREDENTIAL_POLICY``).

Imports no SQL, so the Dify integration uses it without loading the store.
"""

from __future__ import annotations

import logging
import math

from secure_kv.categories import Category
from secure_kv.credentials import find_credential
from secure_kv.errors import InvalidInputError
from secure_kv.settings import CredentialPolicy

__all__ = ["apply_credential_policy", "expiry_for"]

log = logging.getLogger("secure_kv")


def expiry_for(category: Category, seconds: float | None, now: int, default_cache_ttl: float) -> int | None:
    """The expiry in microseconds since the epoch, or ``None`` for an entry that does not
    expire: ``seconds`` after ``now`` (at least one microsecond); a cache entry always
    expires, after ``default_cache_ttl`` seconds when no ``seconds`` are given.
    """
    if seconds is None and category is Category.CACHE:
        seconds = default_cache_ttl
    return None if seconds is None else now + max(1, math.ceil(seconds * 1_000_000))


def apply_credential_policy(
    policy: CredentialPolicy, value: bytes | bytearray | memoryview, category: Category, what: str
) -> Category:
    """The category to store ``value`` under, by ``SECURE_KV_CREDENTIAL_POLICY``.

    One rule for every storage (a SQL workspace and Dify's ``EncryptedStorage``): a
    credential-looking value under another category is logged (``warn``), stored as a token
    (``promote``) or refused (``reject``). ``what`` names the record in messages; the
    value itself never appears in them.
    """
    if category is Category.TOKEN:
        return category
    rule = find_credential(value)
    if rule is None:
        return category
    if policy is CredentialPolicy.REJECT:
        raise InvalidInputError(
            f"the value for {what} looks like a credential ({rule}) but was "
            f"given category {category.value!r}: store it with category=Category.TOKEN "
            "(or set SECURE_KV_CREDENTIAL_POLICY=warn); nothing was stored"
        )
    if policy is CredentialPolicy.PROMOTE:
        log.info("%s looks like a credential (%s): stored as a token", what, rule)
        return Category.TOKEN
    log.warning(
        "%s looks like a credential (%s) but is stored as %s: store it with "
        "category=Category.TOKEN so its reads are audited and it is masked",
        what,
        rule,
        category.value,
    )
    return category
