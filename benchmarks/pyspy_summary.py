"""Summarise a `py-spy record --format raw` profile of mitmdump in microseconds of CPU per request.

`python -m benchmarks.pyspy_summary PROFILE.txt --cpu-ms-per-request 3.6 [--top 25]`

Each sample's share of all samples, times the process's measured CPU per request, gives the
microseconds per request a function accounts for (inclusive: with what it calls; self: in it alone).
`benchmarks.bench --profile DIR` records the profiles and prints these summaries itself.
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


@dataclass(frozen=True, slots=True)
class Summary:
    samples: int
    inclusive: dict[str, int]
    self_: dict[str, int]
    groups: dict[str, int]


def _frame(f: str) -> str:
    """`func (path/file.py:123)` -> `func (path/file.py)`, with site-packages/lib prefixes dropped."""
    f = _LINE.sub(")", f)
    for marker in ("site-packages/", "lib/python3.13/", "lib/python3.12/"):
        f = f.replace(marker, "")
    return f


def _group(frames: Sequence[str]) -> str:
    """Where a sample's time goes, coarsely."""
    joined = ";".join(frames)
    if "exporter/" in joined or "benchmarks/null_addon" in joined:
        if "writer.py" in joined and "_run" in joined:
            return "addon: writer thread"
        return "addon: hooks (exporter/*)"
    if "Thread._bootstrap" in frames[0]:
        return "other threads"
    if "gc_collect" in joined or "<gc>" in joined:
        return "garbage collection"
    if "tls.py" in joined or "OpenSSL" in joined:
        return "mitmproxy: TLS"
    if "addonmanager.py" in joined:
        return "mitmproxy: hook dispatch + built-in addons"
    if "/layers/http" in joined:
        return "mitmproxy: HTTP layers"
    return "mitmproxy: other (event loop, connections, sockets)"


def load(path: Path) -> Summary:
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        self_[frames[-1]] += n
        groups[_group(frames)] += n
    return Summary(total, dict(inclusive), dict(self_), dict(groups))


def report(s: Summary, cpu_ms_per_request: float, top: int = 25, only: str | None = "exporter/") -> str:
    """Lines: groups, then the top functions (those whose name contains `only`, if given), in us/request."""
    if not s.samples:
        return "no samples"
    per = cpu_ms_per_request * 1000 / s.samples
    out = [f"{s.samples} samples; {cpu_ms_per_request:.3f} ms CPU per request", "  us/req  where"]
    for g, n in sorted(s.groups.items(), key=lambda kv: -kv[1]):
        out.append(f"  {n * per:6.0f}  {g}")
    if only is not None:
        rows = [(n, f) for f, n in s.inclusive.items() if only in f]
        out.append(f"  inclusive us/req  self us/req  function (in {only}, by inclusive time)")
    else:
        rows = [(s.inclusive.get(f, 0), f) for f in sorted(s.self_, key=lambda f: -s.self_[f])[:top]]
        out.append("  inclusive us/req  self us/req  function (by self time)")
    rows = rows if only is None else sorted(rows, reverse=True)
    for n, f in rows[:top]:
        out.append(f"  {n * per:16.1f}  {s.self_.get(f, 0) * per:11.1f}  {f}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--cpu-ms-per-request", type=float, required=True)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--all", action="store_true", help="all functions, not only exporter/*")
    args = parser.parse_args(argv)
    print(report(load(args.profile), args.cpu_ms_per_request, args.top, None if args.all else "exporter/"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
