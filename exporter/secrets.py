"""Credentials in prompt text: a maintained pattern set, near-miss filters and a keyed fingerprint."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets as _random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from exporter.values import quick_init

KEY_FILE = ".secret-fingerprint-key"

# The secret types, as they appear in the `type` label (a fixed set: the label is bounded by construction).
GITHUB_TOKEN = "github_token"
AWS_ACCESS_KEY = "aws_access_key"
AWS_SECRET_KEY = "aws_secret_key"
AZURE_STORAGE_KEY = "azure_storage_key"
AZURE_CLIENT_SECRET = "azure_client_secret"
GCP_API_KEY = "gcp_api_key"
PRIVATE_KEY = "private_key"
JWT = "jwt"
SLACK_TOKEN = "slack_token"
SLACK_WEBHOOK = "slack_webhook"
STRIPE_KEY = "stripe_key"
NPM_TOKEN = "npm_token"
PYPI_TOKEN = "pypi_token"
CONNECTION_PASSWORD = "connection_string_password"
HIGH_ENTROPY = "high_entropy_assignment"


@quick_init
@dataclass(frozen=True, slots=True)
class Pattern:
    """One detector: `group` is the regex group holding the secret itself (what is fingerprinted)."""

    type: str
    regex: re.Pattern[str]
    group: int = 0
    check: Callable[[str], bool] | None = None  # a validator that turns away look-alikes
    # A cheap pre-filter: the pattern only runs on a text holding one of these (lower-cased when `fold`),
    # so ordinary code costs a few substring scans instead of one regex pass per pattern.
    needles: tuple[str, ...] = ()
    fold: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class Hit:
    """A match inside one text: its type, the secret's span (for the path hint and dedup) and the secret."""

    type: str
    start: int
    end: int
    value: str


# Values published in vendor documentation and tutorials: matching them is noise, not a leak.
DOC_EXAMPLES = frozenset(
    {
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_test_BQokikJOvBiI2HlWgH4olfQ2",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
        ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    }
)
_PLACEHOLDER = re.compile(
    r"(?i:example|sample|dummy|placeholder|changeme|change_me|your[_-]|redacted|fake)"
    r"|<[^>]*>|\$\{|\{\{|%\(|xxxxxx|XXXXXX|\*\*\*|0{8}|1234567890"
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _not_placeholder(value: str) -> bool:
    return value not in DOC_EXAMPLES and not _PLACEHOLDER.search(value) and len(set(value)) > 4


def _jwt(value: str) -> bool:
    """A JWT's header must decode to a JSON object naming its algorithm."""
    head = value.split(".", 1)[0]
    try:
        doc = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(doc, dict) and "alg" in doc and _not_placeholder(value)


def _password(value: str) -> bool:
    """A connection string's password, unless it is a variable, a placeholder or a word like 'password'."""
    low = value.lower()
    if low in ("password", "passwd", "pass", "pwd", "secret", "user", "username") or value.startswith(("$", "%")):
        return False
    return _not_placeholder(value) and not set(value) <= set("*x.")


def _assignment(value: str) -> bool:
    """An assigned value that looks random: long, mixed, high entropy; not a hash, a UUID or an identifier."""
    if len(value) < 16 or _UUID.match(value) or (_HEX.match(value) and len(value) in (32, 40, 64, 128)):
        return False
    classes = sum(1 for cls in (str.islower, str.isupper, str.isdigit) if any(cls(c) for c in value))
    if classes < 2 or not any(c.isdigit() for c in value):
        return False  # words and snake_case identifiers (a function name assigned to `token_getter = ...`)
    return entropy(value) >= 3.5 and _not_placeholder(value)


_B = r"(?<![A-Za-z0-9_])"  # a word start that also treats `_` as part of the word
_E = r"(?![A-Za-z0-9_])"
_KEYWORD = (
    r"(?:secret|token|passw(?:or)?d|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential|auth[_-]?key)"
)

PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        PRIVATE_KEY,
        re.compile(
            r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----"
            r"[A-Za-z0-9+/=\s:,.\\-]{64,}?-----END \1-----"
        ),
        needles=("-----BEGIN",),
    ),
    Pattern(
        GITHUB_TOKEN,
        re.compile(_B + r"(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{80,251})" + _E),
        check=_not_placeholder,
        needles=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Pattern(
        AWS_ACCESS_KEY,
        re.compile(_B + r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}" + _E),
        check=_not_placeholder,
        needles=("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    Pattern(
        AWS_SECRET_KEY,
        re.compile(r"(?i)aws.{0,24}?(?:secret|private).{0,24}?[\"'=:\s]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"),
        group=1,
        check=_not_placeholder,
        needles=("aws",),
        fold=True,
    ),
    Pattern(
        AZURE_STORAGE_KEY,
        re.compile(r"(?i)AccountKey=([A-Za-z0-9+/]{86}==)"),
        group=1,
        check=_not_placeholder,
        needles=("accountkey=",),
        fold=True,
    ),
    Pattern(
        AZURE_CLIENT_SECRET,
        re.compile(r"(?<![A-Za-z0-9_~.-])([A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34})(?![A-Za-z0-9_~.-])"),
        group=1,
        check=_not_placeholder,
        needles=("Q~",),
    ),
    Pattern(
        GCP_API_KEY,
        re.compile(_B + r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
        check=_not_placeholder,
        needles=("AIza",),
    ),
    Pattern(
        JWT,
        re.compile(
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}(?![A-Za-z0-9_-])"
        ),
        check=_jwt,
        needles=("eyJ",),
    ),
    Pattern(
        SLACK_TOKEN,
        re.compile(_B + r"xox[abposr]-[0-9A-Za-z-]{20,}"),
        check=_not_placeholder,
        needles=("xox",),
    ),
    Pattern(
        SLACK_WEBHOOK,
        re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,}"),
        check=_not_placeholder,
        needles=("hooks.slack.com",),
    ),
    Pattern(
        STRIPE_KEY,
        re.compile(_B + r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{24,99}" + _E),
        check=_not_placeholder,
        needles=("k_live_", "k_test_"),
    ),
    Pattern(NPM_TOKEN, re.compile(_B + r"npm_[A-Za-z0-9]{36}" + _E), check=_not_placeholder, needles=("npm_",)),
    Pattern(PYPI_TOKEN, re.compile(_B + r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"), needles=("pypi-",)),
    Pattern(
        CONNECTION_PASSWORD,
        re.compile(r"(?i)\b[a-z][a-z0-9+.-]{1,24}://[^\s:/@'\"<>]{1,64}:([^\s@/'\"<>]{4,128})@[A-Za-z0-9.-]+"),
        group=1,
        check=_password,
        needles=("://",),
    ),
    Pattern(
        CONNECTION_PASSWORD,
        re.compile(r"(?i)(?:^|;)\s*(?:password|pwd)\s*=\s*([^;'\"\s]{4,128})\s*(?:;|$)", re.MULTILINE),
        group=1,
        check=_password,
        needles=("password", "pwd"),
        fold=True,
    ),
    Pattern(
        HIGH_ENTROPY,
        re.compile(
            r"(?i)" + _KEYWORD + r"[A-Za-z0-9_.-]{0,40}[\"']?\s*(?::=|=>|[:=])\s*[\"']?"
            r"([A-Za-z0-9+/_\-.!@#$%^&*~=]{16,200})"
        ),
        group=1,
        check=_assignment,
        needles=("secret", "token", "passw", "pwd", "key", "credential"),
        fold=True,
    ),
)


# Every needle once, by the haystack it is looked for in: most texts hold none, and then one tight loop of
# substring scans rejects them before the per-pattern loop.
_CASED_NEEDLES = tuple(dict.fromkeys(n for p in PATTERNS if not p.fold for n in p.needles))
_FOLDED_NEEDLES = tuple(dict.fromkeys(n for p in PATTERNS if p.fold for n in p.needles))


_FOLD_LIMIT = 4 * 1024 * 1024  # a longer text is not lower-cased (its folded needles are looked for as they are)


def _any_needle(text: str, lowered: str) -> bool:
    return any(n in text for n in _CASED_NEEDLES) or any(n in lowered for n in _FOLDED_NEEDLES)


def might_hold_secrets(texts: list[str]) -> bool:
    """False when none of `texts` can hold a credential: no needle of any pattern in any of them, looked for
    once in all of them joined (a body's dozens of short strings cost one pass, not one each). True is only
    a maybe: `find_secrets` decides per text. A join too long to lower-case: True (each text is checked)."""
    joined = "\n".join(texts)
    if len(joined) >= _FOLD_LIMIT:
        return True
    return _any_needle(joined, joined.lower())


def find_secrets(text: str) -> list[Hit]:
    """Every credential in `text`, once per distinct value, in order of position; overlapping matches of
    a weaker pattern (the generic assignment inside a JWT or a connection string) are dropped."""
    lowered = text.lower() if len(text) < _FOLD_LIMIT else text
    if not _any_needle(text, lowered):
        return []
    hits: list[Hit] = []
    for p in PATTERNS:  # table order: specific patterns first, the generic assignment last
        haystack = lowered if p.fold else text
        for n in p.needles:
            if n in haystack:
                break
        else:
            continue
        for m in p.regex.finditer(text):
            value = m.group(p.group)
            start, end = m.span(p.group)
            if p.check is not None and not p.check(value):
                continue
            if any(h.start < end and start < h.end for h in hits):
                continue
            hits.append(Hit(p.type, start, end, value))
    seen: set[str] = set()
    out = []
    for h in sorted(hits, key=lambda h: h.start):
        if h.value not in seen:
            seen.add(h.value)
            out.append(h)
    return out


# -- where it was: a file path named in the text before the secret ----------------------------------

_PATH_HINT = re.compile(
    r"(?:(?:^|\n)\s*(?:#|//|--|;)\s*(?:Path|File|filepath):\s*(?P<a>[^\s\"'<>]{1,256})"
    r"|filePath[\"']?\s*[=:]\s*\\?[\"'](?P<b>[^\"'\\<>\n]{1,256})"
    r"|<file(?:name)?\s+(?:path|name)=[\"'](?P<c>[^\"'<>\n]{1,256})"
    r"|```[A-Za-z0-9_+-]*\s+(?P<d>[\w./-]*[/.][\w./-]+)\n)"
)
_PATHISH = re.compile(r"^[\w@~.+/\\:-]+$")


def path_hints(text: str) -> Iterator[tuple[int, str]]:
    """(position, path) of every file path the text names (VS Code attachments, completion `Path:` comments,
    read_file arguments, fenced blocks with a file name)."""
    for m in _PATH_HINT.finditer(text):
        path = m.group("a") or m.group("b") or m.group("c") or m.group("d") or ""
        if path and _PATHISH.match(path):
            yield m.start(), path


def nearest_path(hints: list[tuple[int, str]], position: int, fallback: str | None) -> str | None:
    """The last path named before `position` in the same text, else the one carried over from earlier parts."""
    best = fallback
    for at, path in hints:
        if at > position:
            break
        best = path
    return best


# -- the keyed fingerprint ----------------------------------------------------------------------------


def fingerprint(key: bytes, secret_type: str, value: str) -> str:
    """A keyed HMAC-SHA256 of the secret: the same secret always gives the same id on one install, and the
    id cannot be reversed or brute-forced without the key. Whitespace is ignored (a PEM block re-wrapped
    is still the same key)."""
    normalized = "".join(value.split())
    digest = hmac.new(key, f"{secret_type}\0{normalized}".encode(), hashlib.sha256).hexdigest()
    return f"s-{digest[:24]}"


def install_key(pseudonym_key: str, data_dir: Path) -> bytes:
    """The fingerprint key: the pseudonym key when one is set (ids stay stable across installs sharing it),
    else a random key generated once into the data dir (mode 0600) and reused on every start."""
    if pseudonym_key:
        return hashlib.sha256(b"copilot-secret-fingerprint\0" + pseudonym_key.encode()).digest()
    path = data_dir / KEY_FILE
    try:
        existing = path.read_text(encoding="ascii").strip()
        if len(existing) >= 32:
            return bytes.fromhex(existing)
    except (OSError, ValueError):
        pass
    key = _random.token_bytes(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.hex() + "\n")
    except FileExistsError:  # another process wrote it first: use theirs
        try:
            return bytes.fromhex(path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return key
    except OSError:
        pass  # an unwritable data dir: fingerprints are stable for this run only
    return key


def mask_secrets(text: str) -> str:
    """`text` with every credential replaced by `[REDACTED:<type>]` (for recordings, which keep prompts)."""
    hits = find_secrets(text)
    if not hits:
        return text
    spans = sorted(
        ((m.start(), m.end(), h.type) for h in hits for m in re.finditer(re.escape(h.value), text)),
        key=lambda span: span[0],
    )
    out, at = [], 0
    for start, end, kind in spans:
        if start < at:
            continue
        out.append(text[at:start])
        out.append(f"[REDACTED:{kind}]")
        at = end
    out.append(text[at:])
    return "".join(out)
