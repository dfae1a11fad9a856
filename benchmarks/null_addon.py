"""A do-nothing stand-in for the addon (`benchmarks.bench --diagnose`): the same hooks, no work.

It subscribes to the hooks `exporter/addon.py` uses and, like it, streams event-stream answers through a
pass-through callback while request bodies stay buffered. mitmdump with this script costs what any
addon that observes Copilot streams the same way must cost; the real addon's extra cost over it is its
own work (parsing, counting, the sinks).
"""

from __future__ import annotations

from mitmproxy import connection, http, tls


def _passthrough(chunk: bytes) -> bytes:
    return chunk


class NullInsight:
    def http_connect(self, flow: http.HTTPFlow) -> None:
        pass

    def client_disconnected(self, client: connection.Client) -> None:
        pass

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        pass

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def request(self, flow: http.HTTPFlow) -> None:
        pass

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and "text/event-stream" in flow.response.headers.get("content-type", ""):
            flow.response.stream = _passthrough

    def response(self, flow: http.HTTPFlow) -> None:
        pass

    def error(self, flow: http.HTTPFlow) -> None:
        pass


addons = [NullInsight()]
