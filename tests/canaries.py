"""Fresh random credentials of every secret type the scanner knows, shaped like the real ones (for planting)."""

from __future__ import annotations

import base64
import json
import secrets
import string

from exporter import secrets as s

_ALNUM = string.ascii_letters + string.digits
_UPPER = string.ascii_uppercase + string.digits
_B64 = string.ascii_letters + string.digits + "+/"


def _pick(alphabet: str, n: int) -> str:
    # Every class at least once, so the entropy and class checks of the generic pattern always pass.
    mixed = any(c.isdigit() for c in alphabet) and any(c.isalpha() for c in alphabet)
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(n))
        if not mixed or (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
            return value


def _jwt() -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    sig = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': _pick(_ALNUM, 12), 'iat': 1767220000})}.{sig}"


def _pem() -> str:
    body = base64.b64encode(secrets.token_bytes(600)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----"


def fresh() -> dict[str, str]:
    """type -> a text line carrying one new secret of that type (as it would sit in a file or a shell)."""
    return {
        s.GITHUB_TOKEN: f"export GH_TOKEN=ghp_{_pick(_ALNUM, 36)}",
        s.AWS_ACCESS_KEY: f"aws_access_key_id = AKIA{_pick(_UPPER, 16)}",
        s.AWS_SECRET_KEY: f"aws_secret_access_key = {_pick(_B64, 40)}",
        s.AZURE_STORAGE_KEY: (
            f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={_pick(_B64, 86)}==;"
            "EndpointSuffix=core.windows.net"
        ),
        s.AZURE_CLIENT_SECRET: f"client credential: {_pick(_ALNUM, 3)}8Q~{_pick(_ALNUM, 34)}",
        s.GCP_API_KEY: f"const key = 'AIza{_pick(_ALNUM, 35)}';",
        s.PRIVATE_KEY: _pem(),
        s.JWT: f"Authorization header was {_jwt()} yesterday",
        s.SLACK_TOKEN: f"SLACK_BOT=xoxb-{_pick(string.digits, 12)}-{_pick(string.digits, 12)}-{_pick(_ALNUM, 24)}",
        s.SLACK_WEBHOOK: (
            f"hook https://hooks.slack.com/services/T{_pick(_UPPER, 8)}/B{_pick(_UPPER, 10)}/{_pick(_ALNUM, 24)}"
        ),
        s.STRIPE_KEY: f"stripe.api_key = 'sk_live_{_pick(_ALNUM, 32)}'",
        s.NPM_TOKEN: f"//registry.npmjs.org/:_authToken=npm_{_pick(_ALNUM, 36)}",
        s.PYPI_TOKEN: f"password = pypi-AgEIcHlwaS5vcmc{_pick(_ALNUM + '-_', 70)}",
        s.CONNECTION_PASSWORD: f"DATABASE_URL=postgres://app:{_pick(_ALNUM, 18)}@db.internal:5432/app",
        s.HIGH_ENTROPY: f'SERVICE_SIGNING_SECRET = "{_pick(_ALNUM + "+/", 32)}"',
    }


def core(line: str, secret_type: str) -> str:
    """The secret itself inside a line made by `fresh` (what must never reach an output)."""
    hits = [h for h in s.find_secrets(line) if h.type == secret_type]
    assert len(hits) == 1, (secret_type, line, s.find_secrets(line))
    return hits[0].value
