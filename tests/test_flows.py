"""exporter.flows: the adapters read a flow the way mitmproxy's own accessors would, only cheaper."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from exporter.flows import header, header_map, request_host


def _request(
    http_version: str, authority: str, headers: list[tuple[bytes, bytes]], host: str = "10.0.0.7"
) -> http.Request:
    req = tutils.treq(http_version=http_version.encode(), authority=authority.encode(), host=host, port=443)
    req.headers = http.Headers(headers)
    return req


CASES = [
    ("HTTP/1.1", "", [(b"Host", b"proxy.business.githubcopilot.com")]),
    ("HTTP/1.1", "", [(b"Host", b"api.githubcopilot.com:443")]),
    ("HTTP/1.1", "", [(b"host", b"API.GitHubCopilot.com")]),
    ("HTTP/1.1", "", [(b"Host", b"[2001:db8::1]:8443")]),
    ("HTTP/1.1", "", [(b"Host", b"2001:db8::1")]),
    ("HTTP/1.1", "", []),  # no Host header: the connection's host
    ("HTTP/1.1", "", [(b"Host", b"")]),
    ("HTTP/1.1", "ignored.example:443", [(b"Host", b"api.githubcopilot.com")]),  # HTTP/1: Host wins
    ("HTTP/2.0", "api.githubcopilot.com:443", []),
    ("HTTP/2.0", "api.githubcopilot.com", [(b"Host", b"other.example")]),  # HTTP/2: :authority wins
    ("HTTP/2.0", "", [(b"Host", b"copilot-proxy.githubusercontent.com:443")]),
    ("HTTP/3", "api.individual.githubcopilot.com", []),
    ("HTTP/1.1", "", [(b"Host", b"a\xc3\xa9b.example")]),  # non-ASCII bytes
    ("HTTP/1.1", "", [(b"Host", b"bad host:99999")]),  # not an authority: kept as text, not parsed
]


@pytest.mark.parametrize(("version", "authority", "headers"), CASES)
def test_request_host_equals_mitmproxys_pretty_host(
    version: str, authority: str, headers: list[tuple[bytes, bytes]]
) -> None:
    req = _request(version, authority, headers)
    assert request_host(req, header_map(req.headers)) == req.pretty_host


def test_header_map_keeps_the_first_value_lower_cased() -> None:
    headers = http.Headers([(b"X-Request-Id", b"one"), (b"x-request-id", b"two"), (b"Editor-Version", b"vscode/1.99")])
    assert header_map(headers) == {"x-request-id": "one", "editor-version": "vscode/1.99"}
    assert header(headers, b"x-request-id") == "one"
    assert header(headers, b"content-type") is None
