"""Where the addon's time goes: its hooks driven in-process on the benchmark's traffic mix, timed and profiled.

`python -m benchmarks.profile_addon [--requests 5000] [--summary-users 1000] [--top 30]`

Builds the flows first (not timed), then runs each through the addon the way mitmproxy does for a
streamed answer: requestheaders -> request -> responseheaders -> the stream callback per event ->
response, with every default sink on (Prometheus, JSON event log, daily summary). The background writer
is not started, so its jobs (log lines, the summary flush) run on this thread at the end and are counted
too. Prints the addon's CPU per request without a profiler, then cProfile's breakdown in microseconds per
request (cProfile roughly doubles the times; the shares are what matter). mitmproxy's own cost of
calling the hooks, and the GIL hand-offs to the writer thread in a real process, are not in these
figures: `benchmarks.bench` measures the whole process.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from benchmarks import traffic
from benchmarks.bench import write_day_summary
from exporter.hooks import CopilotInsight
from tests import samples

_BY_NAME = {e.name: e for e in traffic.EXCHANGES}


def build_flows(n: int, users: int, run: int = 1) -> list[tuple[http.HTTPFlow, http.Response, tuple[bytes, ...]]]:
    ids = traffic.Ids(run)
    out = []
    interaction = ids.new()
    clients = [tflow.tclient_conn() for _ in range(users * 2)]
    for i, tpl in zip(range(n), itertools.cycle(traffic.MIX_TEMPLATES), strict=False):
        ex: samples.Exchange = _BY_NAME[tpl.name]
        if tpl.new_interaction:
            interaction = ids.new()
        rid = ids.new()
        f = tflow.tflow()
        f.client_conn = clients[i % len(clients)]
        headers = []
        for k, v in ex.request_headers:
            lk = k.lower()
            if lk == "host":
                continue
            if lk in ("x-request-id", "x-agent-task-id"):
                v = rid
            elif lk == "x-interaction-id":
                v = interaction
            headers.append((k.encode(), v.encode()))
        f.request = http.Request.make(ex.method, ex.url, ex.request_body, headers)
        f.request.raw_content = ex.request_body  # as sent (make() encodes for Content-Encoding: gzip again)
        f.metadata["proxyauth"] = (f"dev{i % users + 1:02d}", "pw")
        resp = http.Response.make(ex.status, b"", [(k.encode(), v.encode()) for k, v in ex.response_headers])
        out.append((f, resp, ex.response_chunks()))
    return out


def drive(addon: CopilotInsight, flows: Sequence[tuple[http.HTTPFlow, http.Response, tuple[bytes, ...]]]) -> None:
    for f, resp, chunks in flows:
        addon.requestheaders(f)
        addon.request(f)
        f.response = resp
        addon.responseheaders(f)
        stream = resp.stream
        if callable(stream):
            for c in chunks:
                stream(c)
            stream(b"")
        else:
            resp.content = b"".join(chunks)
        addon.response(f)
    addon.writer.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--summary-users", type=int, default=0, help="users already in today's summary")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="copilot-profile-") as tmp:
        if args.summary_users:
            write_day_summary(Path(tmp), args.summary_users)
        addon = CopilotInsight()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, copilot_data_dir=tmp, copilot_metrics_port=0)
            drive(addon, build_flows(200, args.users, run=0))  # warm-up: imports, caches, the summary load
            flows = build_flows(n, args.users, run=1)
            c0, t0 = time.process_time(), time.perf_counter()
            drive(addon, flows)
            c1, t1 = time.process_time(), time.perf_counter()
            print(
                f"addon hooks + sinks, no profiler: {(c1 - c0) / n * 1e6:.1f} us CPU per request "
                f"({(t1 - t0) / n * 1e6:.1f} us wall), {n} requests"
            )
            flows = build_flows(n, args.users, run=2)
            prof = cProfile.Profile()
            prof.enable()
            drive(addon, flows)
            prof.disable()
            addon.done()
    stats = pstats.Stats(prof)
    entries = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append((ct, tt, nc, f"{_short(file)}:{line}({func})"))
    total = sum(e[1] for e in entries)
    print(f"cProfile: {total / n * 1e6:.1f} us per request in total (profiler overhead included)")
    print(f"\n{'cumulative us/req':>18s} {'self us/req':>12s} {'calls/req':>10s}  function")
    for ct, tt, nc, name in sorted(entries, reverse=True)[: args.top]:
        print(f"{ct / n * 1e6:18.1f} {tt / n * 1e6:12.1f} {nc / n:10.2f}  {name}")
    print(f"\n{'self us/req':>12s} {'calls/req':>10s}  function (by self time)")
    for _ct, tt, nc, name in sorted(entries, key=lambda e: e[1], reverse=True)[: args.top]:
        print(f"{tt / n * 1e6:12.1f} {nc / n:10.2f}  {name}")
    return 0


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file.replace(str(Path(__file__).resolve().parents[1]) + "/", "")


if __name__ == "__main__":
    raise SystemExit(main())
