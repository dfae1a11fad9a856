"""Does throughput add up over replicas, and do the counts stay exact? One and two addon replicas behind HAProxy.

`python -m benchmarks.fleet [--requests 4000] [--rounds 3] [--concurrency 16] [--quick] [--json-out FILE]`

The fleet set-up of docs/fleet.md on one machine: the benchmark's fake Copilot backend, mitmdump replicas with
the addon (each its own `copilot_instance_id`, one shared data dir, proxy auth), and HAProxy in TCP mode in
front (`balance roundrobin` per connection: the client's CONNECT tunnels are spread, as a load balancer
spreads IDEs). The client is the benchmark's (`benchmarks/loadgen.py`, the traffic mix of
`benchmarks/traffic.py`) with 16 workers. Per round, the same number of requests goes through the fleet of
one replica and through the fleet of two (order alternating); the figures are the medians over the rounds.
At the end, the replicas' `copilot_requests_total` and `copilot_model_calls_total` added up must equal what the
client sent and got answered, and the merged daily rebuild of their event logs must count every interaction.

What it shows on a small machine: replicas add throughput as long as there are cores for them. Each mitmdump
is one Python event loop, about one core at full load; the client, the backend and HAProxy need CPU too. The
machine's core count and load are printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bench import REPO_ROOT, Backend, proc_cpu, today_utc, write_htpasswd
from benchmarks.loadgen import LoadSpec, run_load
from exporter.insight import insight_path
from exporter.rebuild import main as rebuild_main
from tests.e2e.harness import Mitmdump, free_port

USERS = tuple((f"dev{i:02d}", f"bench-pw-{i:02d}") for i in range(1, 9))


@dataclass
class Fleet:
    """Replicas behind one HAProxy; what the client sent through it."""

    name: str
    replicas: list[Mitmdump]
    haproxy: subprocess.Popen[bytes]
    port: int
    ca_path: Path
    counted_sent: int = 0
    calls_sent: int = 0
    rps: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # replicas' CPU ms per answered request
    p99_ms: list[float] = field(default_factory=list)


def haproxy_config(port: int, servers: Sequence[int]) -> str:
    lines = [
        "global",
        "  maxconn 4096",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 120s",
        "  timeout server 120s",
        "frontend copilot_proxy",
        f"  bind 127.0.0.1:{port}",
        "  default_backend replicas",
        "backend replicas",
        "  balance roundrobin",
        *(f"  server r{i} 127.0.0.1:{p}" for i, p in enumerate(servers, start=1)),
    ]
    return "\n".join(lines) + "\n"


def start_haproxy(directory: Path, port: int, servers: Sequence[int]) -> subprocess.Popen[bytes]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(port, servers))
    proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, cwd=directory)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("haproxy did not listen within 15 s")


def start_fleet(name: str, n: int, backend: Backend, directory: Path, htpasswd: Path) -> Fleet:
    """`n` replicas on one shared data dir, each with its own instance id and all with the first one's CA
    (docs/fleet.md: the client trusts one CA, whichever replica the balancer picks), behind HAProxy."""
    data_dir = directory / f"{name}-data"
    replicas: list[Mitmdump] = []
    for i in range(1, n + 1):
        mitm = Mitmdump(
            backend,
            directory / f"{name}-r{i}",
            addon=REPO_ROOT / "benchmarks" / "addon_entry.py",
            proxyauth=f"@{htpasswd}",
            options={
                "copilot_data_dir": str(data_dir),
                "copilot_instance_id": f"r{i}",
                "copilot_metrics_port": free_port(),
            },
            start_timeout=60,
        )
        if replicas:
            mitm.confdir.mkdir(parents=True, exist_ok=True)
            for ca in replicas[0].confdir.glob("mitmproxy-ca*"):
                shutil.copy(ca, mitm.confdir / ca.name)
        replicas.append(mitm.start())
    first = replicas[0].ca_cert_path.read_bytes()
    if any(m.ca_cert_path.read_bytes() != first for m in replicas):
        raise RuntimeError("the replicas do not share one CA")
    port = free_port()
    haproxy_dir = directory / f"{name}-haproxy"
    haproxy_dir.mkdir()
    haproxy = start_haproxy(haproxy_dir, port, [m.port for m in replicas])
    return Fleet(name, replicas, haproxy, port, replicas[0].ca_cert_path)


def run_round(fleet: Fleet, requests: int, concurrency: int, run_id: int) -> None:
    spec = LoadSpec(
        port=fleet.port,
        ca_path=str(fleet.ca_path),
        users=USERS,
        requests=requests,
        concurrency=concurrency,
        run_id=run_id,
        per_connection=200,
        time_limit=300.0,
    )
    c0 = sum(proc_cpu(m.pid) for m in fleet.replicas)
    result = asyncio.run(run_load(spec))
    time.sleep(0.2)  # the writer threads finish the last answers' lines
    c1 = sum(proc_cpu(m.pid) for m in fleet.replicas)
    if result.errors or result.timed_out:
        raise RuntimeError(f"{fleet.name}: {result.errors} errors, timed out {result.timed_out}: {result.first_errors}")
    fleet.counted_sent += result.counted
    fleet.calls_sent += result.model_calls
    fleet.rps.append(result.rps)
    fleet.cpu_ms.append((c1 - c0) * 1000 / max(1, result.ok))
    lat = sorted(result.latencies)
    fleet.p99_ms.append(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else 0.0)


def metric_sums(replicas: Sequence[Mitmdump]) -> tuple[float, float]:
    """copilot_requests_total and copilot_model_calls_total, summed over every series of `replicas`."""
    counted = calls = 0.0
    for mitm in replicas:
        text = httpx.get(mitm.metrics_url, timeout=5, trust_env=False).text
        for fam in text_string_to_metric_families(text):
            total = sum(s.value for s in fam.samples if s.name.endswith("_total"))
            if fam.name == "copilot_requests":
                counted += total
            elif fam.name == "copilot_model_calls":
                calls += total
    return counted, calls


def check_counts(fleet: Fleet, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        counted, calls = metric_sums(fleet.replicas)
        ok = (counted, calls) == (fleet.counted_sent, fleet.calls_sent)
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    per_replica = [metric_sums([m])[0] for m in fleet.replicas]
    return {
        "counted_sent": fleet.counted_sent,
        "copilot_requests_total": counted,
        "model_calls_sent": fleet.calls_sent,
        "copilot_model_calls_total": calls,
        "per_replica_requests": per_replica,
        "ok": ok,
    }


def stop_fleet(fleet: Fleet) -> None:
    fleet.haproxy.terminate()
    try:
        fleet.haproxy.wait(10)
    except subprocess.TimeoutExpired:
        fleet.haproxy.kill()
    for mitm in fleet.replicas:
        mitm.stop()


def rebuilt_interactions(data_dir: Path) -> int:
    """The merged daily rebuild of every replica's event log: the interactions of the extended summary (next
    edits included, which the original schema has no place for)."""
    day = today_utc()
    if rebuild_main(["--data-dir", str(data_dir), day]) != 0:
        raise RuntimeError("the rebuild failed")
    doc = json.loads(insight_path(data_dir, day).read_text())
    return int(doc["totals"]["interactions"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=4000, help="requests per fleet per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="300 requests, 1 round: checks counts, no timings")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    requests, rounds = (300, 1) if args.quick else (args.requests, args.rounds)
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        print("benchmarks.fleet: haproxy is needed (apt-get install haproxy)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="copilot-fleet-bench-") as tmp:
        directory = Path(tmp)
        backend = Backend(directory, slow_delay_ms=50)
        htpasswd = write_htpasswd(directory / "htpasswd", USERS, rounds=5)
        fleets: list[Fleet] = []
        try:
            fleets = [start_fleet(name, n, backend, directory, htpasswd) for name, n in (("one", 1), ("two", 2))]
            run_id = 1
            for r in range(rounds):
                for fleet in fleets if r % 2 == 0 else reversed(fleets):
                    run_round(fleet, requests, args.concurrency, run_id)
                    run_id += 1
            counts = {f.name: check_counts(f) for f in fleets}
            for f in fleets:
                stop_fleet(f)
            rebuilt = {f.name: rebuilt_interactions(directory / f"{f.name}-data") for f in fleets}
        finally:
            for f in fleets:
                if f.haproxy.poll() is None:
                    stop_fleet(f)
            backend.stop()
    load_after = os.getloadavg()
    out: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "requests_per_round": requests,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "fleets": {
            f.name: {
                "replicas": len(f.replicas),
                "rps": f.rps,
                "cpu_ms_per_request": f.cpu_ms,
                "p99_ms": f.p99_ms,
                "counts": counts[f.name],
                "rebuilt_interactions": rebuilt[f.name],
            }
            for f in fleets
        },
    }
    ok = all(c["ok"] for c in counts.values()) and all(rebuilt[f.name] == f.counted_sent for f in fleets)
    print(
        f"fleet benchmark: {requests} requests x {rounds} rounds per fleet, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores, load {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    for f in fleets:
        c = counts[f.name]
        print(
            f"  {f.name} replica(s): rps median {statistics.median(f.rps):.0f} {[round(x) for x in f.rps]}, "
            f"replicas' CPU {statistics.median(f.cpu_ms):.2f} ms/request, p99 {statistics.median(f.p99_ms):.1f} ms; "
            f"counted {c['copilot_requests_total']:.0f}/{c['counted_sent']} "
            f"(per replica {[round(x) for x in c['per_replica_requests']]}), model calls "
            f"{c['copilot_model_calls_total']:.0f}/{c['model_calls_sent']}, rebuild {rebuilt[f.name]}"
        )
    one, two = (statistics.median(f.rps) for f in fleets)
    print(f"  two replicas / one: {two / one:.2f}x throughput; counts exact: {ok}")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
