"""Adapters from mitmproxy flows to the call tracker's plain values: each flow is read once, here."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http
from mitmproxy.net.http import url

from exporter.calls import Feed, RequestMeta, ResponseHead, ResponseMeta, WsFrame, error_class
from exporter.classify import HostRole


def header_map(headers: http.Headers) -> dict[str, str]:
    """Lower-cased name -> first value, built in one pass: mitmproxy's Headers.get scans every field."""
    out: dict[str, str] = {}
    for name, value in headers.fields:
        key = name.decode("ascii", "replace").lower()
        if key not in out:
            out[key] = value.decode("utf-8", "replace")
    return out


def header(headers: http.Headers, name: bytes) -> str | None:
    """The first value of header `name` (lower case), one pass over the raw fields: mitmproxy's Headers.get
    decodes and lower-cases every field on each lookup, several times slower."""
    for key, value in headers.fields:
        if len(key) == len(name) and key.lower() == name:
            return value.decode("utf-8", "replace")
    return None


def request_host(req: http.Request, headers: dict[str, str]) -> str:
    """`req.pretty_host` from the header map already built: mitmproxy's property looks the Host header up again
    (a scan of every field) and is read for every request."""
    authority = (req.authority if req.is_http2 or req.is_http3 else "") or headers.get("host")
    if authority:
        return url.parse_authority(authority, check=False)[0]
    return req.host


def request_meta(
    flow: http.HTTPFlow, host: str, role: HostRole, headers: dict[str, str], user: str, record: bool
) -> RequestMeta:
    """`host` is the request's pretty_host, already read by the caller (it parses the Host header each time)."""
    req = flow.request
    return RequestMeta(
        host=host,
        role=role,
        method=req.method,
        path=req.path,
        headers=headers,
        user=user,
        connection=flow.client_conn.id,
        url=req.pretty_url if record else "",
        header_items=tuple(req.headers.items(multi=True)) if record else (),
    )


def response_head(flow: http.HTTPFlow) -> ResponseHead | None:
    resp = flow.response
    if resp is None:
        return None
    return ResponseHead(
        status=resp.status_code,
        content_type=header(resp.headers, b"content-type") or "",
        content_encoding=header(resp.headers, b"content-encoding"),
    )


def quota_headers(headers: http.Headers) -> tuple[tuple[str, str], ...]:
    """Only the quota and rate-limit snapshot headers (the tracker needs nothing else of a response head)."""
    # One pass over the raw fields (Headers.items decodes every field and is several times slower).
    return tuple(
        (name.decode("ascii", "replace"), value.decode("utf-8", "replace"))
        for name, value in headers.fields
        if name[:2] in (b"x-", b"X-") and name.lower().startswith((b"x-quota-snapshot-", b"x-usage-ratelimit-"))
    )


def response_meta(flow: http.HTTPFlow, record: bool) -> ResponseMeta:
    resp = flow.response
    error = error_class(flow.error.msg) if flow.error is not None else None
    if resp is None:
        return ResponseMeta(status=None, error=error)
    return ResponseMeta(
        status=resp.status_code,
        content_encoding=header(resp.headers, b"content-encoding"),
        body=resp.raw_content,  # a reference, not a copy; None once streamed
        error=error,
        websocket=flow.websocket is not None,
        header_items=tuple(resp.headers.items(multi=True)) if record else (),
        quota_headers=quota_headers(resp.headers),
    )


def last_frame(flow: http.HTTPFlow) -> WsFrame | None:
    if flow.websocket is None or not flow.websocket.messages:
        return None
    msg = flow.websocket.messages[-1]
    return WsFrame(from_client=msg.from_client, is_text=msg.is_text, content=msg.content)


def tee(feed: Feed) -> Callable[[bytes], bytes]:
    """The stream callback: passes every chunk on unchanged and hands the tracker a copy (it never raises)."""

    def passthrough(chunk: bytes) -> bytes:
        feed(chunk)
        return chunk

    return passthrough
