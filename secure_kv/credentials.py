"""Does a value look like a credential? (``SECURE_KV_CREDENTIAL_POLICY``)

:func:`find_credential` returns the name of the first rule that matched, never the matched
text, so it is safe to log. It looks only at values that decode as UTF-8 text and are of
credential size (8 bytes to 16 KiB): cached files, images and other binary data are not
scanned.

Rules, from most to least specific:

1. **Known token formats** (about 110 rules): the prefixed keys of the providers plugins
   call (OpenAI, Anthropic, Google, GitHub, GitLab, Slack, AWS, Stripe, Twilio, SendGrid,
   Hugging Face, Azure, and many more), checked on each word of the text.
2. **Shapes**: PEM private keys, JWTs, URLs with a password, webhook URLs, bearer and basic
   authorization headers, ``api_key = ...`` / ``"password": ...`` assignments whose value
   looks random.
3. **High entropy**, only when the whole value is a single token without spaces, 20 to 512
   characters, mixing letters and digits, not a UUID, not only hex digits (hashes and ids),
   not a path, URL, e-mail address or an encoded image.

Linear in the value's length, at most 16 KiB: every regular expression is anchored or
bounded, and the assignment rule judges each character at most once (bench/credential_scan.py
measures crafted values; tests/test_credentials.py counts the work).

Written for this store rather than taken from a scanner: scanners such as detect-secrets
read source files line by line with global settings and pull in HTTP clients to verify
hits; here one short value is classified on every ``set``, in microseconds. The formats
follow the providers' documentation and public rule sets (gitleaks, detect-secrets), and
``tests/test_credentials.py`` pins true and false positives.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import math
import re
from collections import Counter

__all__ = ["MAX_SCAN_BYTES", "MIN_SCAN_BYTES", "RULES", "find_credential"]

log = logging.getLogger("secure_kv")

MIN_SCAN_BYTES = 8
MAX_SCAN_BYTES = 16 * 1024

_A = "A-Za-z0-9"
_W = "A-Za-z0-9_"
_T = r"A-Za-z0-9_\-"

# (rule name, literal prefix, pattern matched at the start of a word). The pattern must
# start with the prefix; a word is a run of token characters (see _WORD).
RULES: tuple[tuple[str, str, str], ...] = (
    # AI model providers
    ("anthropic-api-key", "sk-ant-", rf"sk-ant-(?:api|admin|sid)\d\d-[{_T}]{{80,}}"),
    ("openai-project-key", "sk-proj-", rf"sk-proj-[{_T}]{{40,}}"),
    ("openai-service-account-key", "sk-svcacct-", rf"sk-svcacct-[{_T}]{{40,}}"),
    ("openai-admin-key", "sk-admin-", rf"sk-admin-[{_T}]{{40,}}"),
    ("openrouter-api-key", "sk-or-", r"sk-or-v\d-[a-f0-9]{64}"),
    ("openai-style-api-key", "sk-", rf"sk-(?=[{_T}]*\d)(?=[{_T}]*[A-Za-z])[{_T}]{{20,}}"),
    ("elevenlabs-api-key", "sk_", r"sk_[a-f0-9]{48}"),
    ("huggingface-token", "hf_", rf"hf_[{_A}]{{30,}}"),
    ("huggingface-org-token", "api_org_", rf"api_org_[{_A}]{{30,}}"),
    ("google-api-key", "AIza", rf"AIza[{_T}]{{35}}"),
    ("google-oauth-client-secret", "GOCSPX-", rf"GOCSPX-[{_T}]{{24,}}"),
    ("google-oauth-access-token", "ya29.", rf"ya29\.[{_T}]{{20,}}"),
    ("google-oauth-refresh-token", "1//", rf"1//0[{_T}]{{40,}}"),
    ("groq-api-key", "gsk_", rf"gsk_[{_A}]{{40,}}"),
    ("perplexity-api-key", "pplx-", rf"pplx-[{_A}]{{40,}}"),
    ("replicate-api-token", "r8_", rf"r8_[{_A}]{{30,}}"),
    ("xai-api-key", "xai-", rf"xai-[{_A}]{{60,}}"),
    ("tavily-api-key", "tvly-", rf"tvly-(?:dev-|prod-)?[{_A}]{{24,}}"),
    ("firecrawl-api-key", "fc-", r"fc-[a-f0-9]{32}"),
    ("langsmith-api-key", "lsv2_", r"lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}"),
    ("pinecone-api-key", "pcsk_", rf"pcsk_[{_W}]{{40,}}"),
    ("jina-api-key", "jina_", rf"jina_[{_T}]{{40,}}"),
    ("voyage-api-key", "pa-", rf"pa-(?=[{_T}]*\d)[{_T}]{{40,}}"),
    ("notion-token", "secret_", rf"secret_[{_A}]{{43}}"),
    ("notion-token", "ntn_", rf"ntn_[{_A}]{{40,}}"),
    ("airtable-token", "pat", rf"pat[{_A}]{{14}}\.[a-f0-9]{{64}}"),
    ("linear-api-key", "lin_api_", rf"lin_api_[{_A}]{{40}}"),
    ("linear-oauth-token", "lin_oauth_", rf"lin_oauth_[{_A}]{{40,}}"),
    ("1password-service-account-token", "ops_eyJ", r"ops_eyJ[A-Za-z0-9+/]{100,}"),
    ("age-secret-key", "AGE-SECRET-KEY-1", r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}"),
    # Code hosting and package registries
    ("github-token", "ghp_", rf"ghp_[{_A}]{{36}}"),
    ("github-token", "gho_", rf"gho_[{_A}]{{36}}"),
    ("github-token", "ghu_", rf"ghu_[{_A}]{{36}}"),
    ("github-token", "ghs_", rf"ghs_[{_A}]{{36}}"),
    ("github-token", "ghr_", rf"ghr_[{_A}]{{36}}"),
    ("github-fine-grained-token", "github_pat_", rf"github_pat_[{_W}]{{50,}}"),
    ("gitlab-token", "glpat-", rf"glpat-[{_T}.]{{20,}}"),
    ("gitlab-token", "gldt-", rf"gldt-[{_T}]{{20,}}"),
    ("gitlab-token", "glrt-", rf"glrt-[{_T}.]{{20,}}"),
    ("gitlab-token", "glptt-", r"glptt-[a-f0-9]{40}"),
    ("gitlab-token", "gloas-", rf"gloas-[{_T}]{{40,}}"),
    ("gitlab-token", "glft-", rf"glft-[{_T}]{{20,}}"),
    ("gitlab-token", "glimt-", rf"glimt-[{_T}]{{25,}}"),
    ("gitlab-token", "glcbt-", rf"glcbt-[{_A}]{{1,5}}_[{_T}]{{20,}}"),
    ("gitlab-token", "glsoat-", rf"glsoat-[{_T}]{{20,}}"),
    ("gitlab-token", "glffct-", rf"glffct-[{_T}]{{20,}}"),
    ("gitlab-token", "glagent-", rf"glagent-[{_T}]{{50,}}"),
    ("gitlab-runner-registration-token", "GR1348941", rf"GR1348941[{_T}]{{20,}}"),
    ("bitbucket-app-password", "ATBB", rf"ATBB[{_A}]{{28,}}"),
    ("atlassian-api-token", "ATATT3", rf"ATATT3[{_T}=]{{100,}}"),
    ("npm-token", "npm_", rf"npm_[{_A}]{{36}}"),
    ("pypi-token", "pypi-AgE", rf"pypi-AgE[{_T}]{{50,}}"),
    ("rubygems-token", "rubygems_", r"rubygems_[a-f0-9]{48}"),
    ("docker-hub-token", "dckr_pat_", rf"dckr_pat_[{_T}]{{24,}}"),
    ("clojars-token", "CLOJARS_", r"CLOJARS_[a-z0-9]{60}"),
    ("artifactory-api-key", "AKCp", rf"AKCp[{_A}]{{69}}"),
    ("readme-api-key", "rdme_", r"rdme_[a-z0-9]{70}"),
    ("postman-api-key", "PMAK-", r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}"),
    ("prefect-api-key", "pnu_", rf"pnu_[{_A}]{{36}}"),
    # Chat and messaging
    ("slack-token", "xoxb-", rf"xoxb-\d+-[{_T}]{{10,}}"),
    ("slack-token", "xoxp-", rf"xoxp-\d+-[{_T}]{{10,}}"),
    ("slack-token", "xoxa-", rf"xoxa-[{_T}]{{10,}}"),
    ("slack-token", "xoxr-", rf"xoxr-[{_T}]{{10,}}"),
    ("slack-token", "xoxe", rf"xoxe(?:\.xox[bp])?-\d-[{_A}]{{100,}}"),
    ("slack-token", "xoxs-", rf"xoxs-\d+-[{_T}]{{10,}}"),
    ("slack-token", "xoxo-", rf"xoxo-\d+-[{_T}]{{10,}}"),
    ("slack-app-token", "xapp-", rf"xapp-\d-[A-Z0-9]+-\d+-[{_A}]{{20,}}"),
    ("sendgrid-api-key", "SG.", rf"SG\.[{_T}]{{16,32}}\.[{_T}]{{30,50}}"),
    ("brevo-api-key", "xkeysib-", rf"xkeysib-[a-f0-9]{{64}}-[{_A}]{{16}}"),
    ("brevo-smtp-key", "xsmtpsib-", rf"xsmtpsib-[a-f0-9]{{64}}-[{_A}]{{16}}"),
    ("mailgun-api-key", "key-", r"key-[a-f0-9]{32}"),
    ("twilio-api-key", "SK", r"SK[a-f0-9]{32}"),
    ("mailchimp-api-key", "", r"[a-f0-9]{32}-us\d{1,2}"),
    # Cloud and infrastructure
    ("aws-access-key-id", "AKIA", r"AKIA[A-Z2-7]{16}"),
    ("aws-access-key-id", "ASIA", r"ASIA[A-Z2-7]{16}"),
    ("aws-access-key-id", "ABIA", r"ABIA[A-Z2-7]{16}"),
    ("aws-access-key-id", "ACCA", r"ACCA[A-Z2-7]{16}"),
    ("aws-access-key-id", "A3T", r"A3T[A-Z0-9][A-Z2-7]{16}"),
    ("aws-bedrock-api-key", "ABSK", r"ABSK[A-Za-z0-9+/]{100,}={0,2}"),
    ("alibaba-access-key-id", "LTAI", rf"LTAI[{_A}]{{20}}"),
    ("azure-ad-client-secret", "", rf"[{_A}~.]{{3}}\dQ~[{_T}~.]{{31,34}}"),
    ("digitalocean-token", "dop_v1_", r"dop_v1_[a-f0-9]{64}"),
    ("digitalocean-token", "doo_v1_", r"doo_v1_[a-f0-9]{64}"),
    ("digitalocean-token", "dor_v1_", r"dor_v1_[a-f0-9]{64}"),
    ("heroku-api-key", "HRKU-", rf"HRKU-[{_T}]{{40,}}"),
    ("hashicorp-vault-token", "hvs.", rf"hvs\.[{_T}]{{24,}}"),
    ("hashicorp-vault-token", "hvb.", rf"hvb\.[{_T}]{{24,}}"),
    ("hashicorp-vault-token", "hvr.", rf"hvr\.[{_T}]{{24,}}"),
    ("terraform-cloud-token", "", rf"[{_A}]{{14}}\.atlasv1\.[{_T}=]{{60,}}"),
    ("doppler-token", "dp.", rf"dp\.(?:pt|st|sa|ct|scim|audit)\.[{_A}]{{40,}}"),
    ("databricks-token", "dapi", r"dapi[a-f0-9]{32}(?:-\d)?"),
    ("grafana-token", "glsa_", rf"glsa_[{_A}]{{32}}_[a-fA-F0-9]{{8}}"),
    ("grafana-token", "glc_", r"glc_[A-Za-z0-9+/]{32,}={0,2}"),
    ("grafana-token", "eyJrIjoi", r"eyJrIjoi[A-Za-z0-9]{70,}={0,2}"),
    ("flyio-token", "fo1_", rf"fo1_[{_T}]{{40,}}"),
    ("flyio-token", "fm2_", r"fm2_[A-Za-z0-9+/]{100,}={0,3}"),
    ("pulumi-token", "pul-", r"pul-[a-f0-9]{40}"),
    ("supabase-token", "sbp_", r"sbp_[a-f0-9]{40}"),
    ("planetscale-token", "pscale_", rf"pscale_(?:tkn|oauth|pw)_[{_T}.=]{{32,}}"),
    ("newrelic-key", "NRAK-", r"NRAK-[A-Z0-9]{27}"),
    ("newrelic-key", "NRII-", rf"NRII-[{_T}]{{32}}"),
    ("sentry-token", "sntrys_", r"sntrys_eyJ[A-Za-z0-9+/=_]{60,}"),
    ("sentry-token", "sntryu_", r"sntryu_[a-f0-9]{64}"),
    ("cloudflare-origin-ca-key", "v1.0-", r"v1\.0-[a-f0-9]{24}-[a-f0-9]{146}"),
    ("dynatrace-token", "dt0c01.", r"dt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}"),
    ("easypost-api-key", "EZAK", rf"EZAK[{_A}]{{54}}"),
    ("shopify-token", "shpat_", r"shpat_[a-fA-F0-9]{32}"),
    ("shopify-token", "shpca_", r"shpca_[a-fA-F0-9]{32}"),
    ("shopify-token", "shppa_", r"shppa_[a-fA-F0-9]{32}"),
    ("shopify-token", "shpss_", r"shpss_[a-fA-F0-9]{32}"),
    # Payments
    ("stripe-secret-key", "sk_live_", rf"sk_live_[{_A}]{{20,}}"),
    ("stripe-secret-key", "sk_test_", rf"sk_test_[{_A}]{{20,}}"),
    ("stripe-restricted-key", "rk_live_", rf"rk_live_[{_A}]{{20,}}"),
    ("stripe-restricted-key", "rk_test_", rf"rk_test_[{_A}]{{20,}}"),
    ("stripe-webhook-secret", "whsec_", rf"whsec_[{_A}+/=]{{30,}}"),
    ("square-token", "sq0atp-", rf"sq0atp-[{_T}]{{22,}}"),
    ("square-token", "sq0csp-", rf"sq0csp-[{_T}]{{40,}}"),
    ("square-token", "EAAA", rf"EAAA[{_T}]{{60}}"),
    ("facebook-access-token", "EAA", rf"EAA[CGM][{_A}]{{80,}}"),
    ("duffel-token", "duffel_", rf"duffel_(?:test|live)_[{_T}=]{{43}}"),
    ("flutterwave-key", "FLWSECK", rf"FLWSECK(?:_TEST)?-[{_A}]{{32}}-X"),
    ("shippo-token", "shippo_", r"shippo_(?:live|test)_[a-fA-F0-9]{40}"),
    # Generic shapes that start a word
    ("jwt", "eyJ", rf"eyJ[{_T}]{{10,}}\.eyJ[{_T}]{{10,}}\.[{_T}]{{10,}}"),
)

# Rules over the whole text: their matches span characters that end a word. Each has a
# literal that any match contains (in lower case for the case-insensitive ones), so the
# regular expression only runs on text that may match.
_TEXT_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("private-key", "PRIVATE KEY", re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")),
    ("putty-private-key", "PuTTY-User-Key-File-", re.compile(r"PuTTY-User-Key-File-\d+:")),
    (
        "url-with-password",
        "://",
        re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,30}://[^\s/:@]{1,200}:[^\s/:@]{3,200}@[^\s/@]"),
    ),
    (
        "slack-webhook-url",
        "hooks.slack.com/",
        re.compile(r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{20,}"),
    ),
    (
        "discord-webhook-url",
        "/api/webhooks/",
        re.compile(r"discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]{50,}"),
    ),
    (
        "teams-webhook-url",
        ".webhook.office.com/",
        re.compile(r"\.webhook\.office\.com/webhookb2/[A-Za-z0-9\-@]{40,}"),
    ),
    (
        "telegram-bot-token",
        ":AA",
        re.compile(r"(?<![0-9])\d{6,12}:AA[A-Za-z0-9_\-]{32,34}(?![A-Za-z0-9_\-])"),
    ),
    ("azure-storage-key", "AccountKey=", re.compile(r"AccountKey=[A-Za-z0-9+/]{80,90}={0,2}")),
    ("azure-sas-signature", "sig=", re.compile(r"[?&]sig=[A-Za-z0-9%+/]{40,}")),
    (
        "braintree-token",
        "access_token$",
        re.compile(r"access_token\$production\$[a-z0-9]{16}\$[a-f0-9]{32}"),
    ),
    (
        "discord-bot-token",
        ".",
        re.compile(r"(?<![A-Za-z0-9])[MN][A-Za-z0-9]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38}"),
    ),
)
_HEADER_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("authorization-header", "bearer", re.compile(r"(?i)\bbearer\s{1,8}[A-Za-z0-9_\-.~+/]{20,}=*")),
    ("authorization-header", "token ", re.compile(r"(?i)\btoken\s{1,8}[A-Za-z0-9_\-.~+/]{20,}=*")),
    (
        "authorization-header",
        "basic",
        re.compile(r"(?i)\bbasic\s{1,8}[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/])"),
    ),
)
# "api_key = ...", "password: ...", "SECRET_TOKEN=...", '"client_secret": "..."': what may
# follow one of these words (in lower case) before the value.
_ASSIGNMENT_WORDS = ("key", "secret", "token", "pass", "pwd", "credential", "auth")
_ASSIGNMENT_WORD = re.compile("|".join(_ASSIGNMENT_WORDS))
_ASSIGNMENT_TAIL = re.compile(r"[a-z0-9_\-]{0,20}[\"']?\s{0,3}[:=]>?\s{0,3}[\"']?([^\s\"',;&}<>]{8,200})")
# A word: where the known formats are looked for.
_WORD = re.compile(r"[A-Za-z0-9_\-.~+/]{10,}={0,3}")
_VOWELS = frozenset("aeiouAEIOU")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"(?:0x)?[0-9a-fA-F]+")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|\.+|<[^>]*>|\$\{[^}]*\}|\{\{[^}]*\}\}|changeme|none|null|true|false|undefined)$"
)
# Files that commonly travel as base64: PNG, JPEG, GIF, PDF, ZIP, WebP/RIFF, gzip, MP4/HEIC.
_FILE_MAGIC = (
    b"\x89PNG",
    b"\xff\xd8\xff",
    b"GIF8",
    b"%PDF",
    b"PK\x03\x04",
    b"RIFF",
    b"\x1f\x8b",
    b"\x00\x00\x00",
)

_BY_PREFIX: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
_SHAPES: list[tuple[str, re.Pattern[str]]] = []
for _name, _prefix, _pattern in RULES:
    _compiled = re.compile(_pattern + r"(?![A-Za-z0-9_\-])")
    if _prefix:
        _BY_PREFIX.setdefault(_prefix, []).append((_name, _compiled))
    else:
        _SHAPES.append((_name, _compiled))
_PREFIXES = tuple(sorted(_BY_PREFIX, key=len, reverse=True))


def find_credential(value: bytes | bytearray | memoryview) -> str | None:
    """The name of the rule by which ``value`` looks like a credential, or ``None``."""
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    if size < MIN_SCAN_BYTES or size > MAX_SCAN_BYTES:
        return None
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text):
        return None  # binary that happens to be valid UTF-8
    return _scan(text)


def _scan(text: str) -> str | None:
    for word_match in _WORD.finditer(text):
        found = _known_format(word_match.group())
        if found is not None:
            return found
    for name, needle, pattern in _TEXT_RULES:
        if needle in text and pattern.search(text):
            return name
    lowered = text.lower()
    for name, needle, pattern in _HEADER_RULES:
        if needle in lowered and pattern.search(text):
            return name
    if _secret_assignment(text, lowered):
        return "secret-assignment"
    stripped = text.strip()
    if 20 <= len(stripped) <= 512 and not any(char.isspace() for char in stripped):
        if _high_entropy_token(stripped):
            return "high-entropy-string"
    return None


def _secret_assignment(text: str, lowered: str) -> bool:
    """``api_key = <random-looking value>`` anywhere in ``text``, in linear time.

    One left-to-right pass over every assignment word at once; after a value is examined
    the search goes on after it, so no character is judged twice. (Searching each word
    from each occurrence, as before, examined overlapping values: ``key=K1key=K1...``
    cost 0.17 s of CPU at 16 KiB; bench/credential_scan.py.)
    """
    position = 0
    while (word := _ASSIGNMENT_WORD.search(lowered, position)) is not None:
        tail = _ASSIGNMENT_TAIL.match(lowered, word.end())
        if tail is None:
            position = word.start() + 1
            continue
        candidate = text[tail.start(1) : tail.end(1)]  # the value, with its case
        if not _PLACEHOLDER.match(candidate) and _looks_random(candidate, minimum=8):
            return True
        position = tail.end(1)
    return False


def _known_format(word: str) -> str | None:
    if word.startswith(_PREFIXES):
        for prefix in _PREFIXES:
            if word.startswith(prefix):
                for name, pattern in _BY_PREFIX[prefix]:
                    if pattern.match(word):
                        return name
    if len(word) >= 30:
        for name, pattern in _SHAPES:
            if pattern.match(word):
                return name
    return None


def _entropy(text: str) -> float:
    counts = Counter(text)
    length = len(text)
    return -sum(count / length * math.log2(count / length) for count in counts.values())


def _classes(text: str) -> int:
    return (
        any(char.islower() for char in text)
        + any(char.isupper() for char in text)
        + any(char.isdigit() for char in text)
    )


def _looks_random(text: str, *, minimum: int) -> bool:
    """Mixed letters and digits, with frequent switches between character classes.

    Words, identifiers such as ``oauth2_authorization_code`` and numbers do not qualify.
    """
    if len(text) < minimum or _classes(text) < 2 or not any(char.isdigit() for char in text):
        return False
    if not any(char.isalpha() for char in text):
        return False
    letters = [char for char in text if char.isalpha()]
    if len(letters) >= 8 and sum(char in _VOWELS for char in letters) / len(letters) >= 0.3:
        return False  # words: about 38 % of letters in English identifiers are vowels, 19 % at random
    switches = sum(1 for a, b in itertools.pairwise(text) if _kind(a) != _kind(b))
    return switches / len(text) >= 0.3 and _entropy(text) >= min(3.0, math.log2(len(text)) - 0.5)


def _kind(char: str) -> int:
    if char.isdigit():
        return 0
    if char.islower():
        return 1
    if char.isupper():
        return 2
    return 3


def _high_entropy_token(token: str) -> bool:
    if _UUID.fullmatch(token) or _HEX.fullmatch(token):
        return False  # ids and hashes: hex alone carries too little to call it a secret
    if "://" in token or token.startswith(("/", "./", "../", "~/", "data:")) or "@" in token:
        return False
    if _classes(token) < 3 or _decodes_to_file(token):
        return False
    # Random base64/alphanumeric tokens of this length score about 4.0-5.5 bits per
    # character; identifiers and words mixing a few classes stay well below.
    threshold = 3.5 if len(token) < 32 else 4.0
    return _entropy(token) >= threshold and _looks_random(token, minimum=20)


def _decodes_to_file(token: str) -> bool:
    padded = token + "=" * (-len(token) % 4)
    try:
        head = base64.b64decode(padded[:64], validate=True)
    except (binascii.Error, ValueError):
        try:
            head = base64.urlsafe_b64decode(padded[:64])
        except (binascii.Error, ValueError):
            return False
    return head.startswith(_FILE_MAGIC)
