"""Secret scanning throughput: MB/s of prompt text per core, and hits on a corpus of canaries and near misses.

    .venv/bin/python -m benchmarks.secret_scan [--mb 8] [--detect-secrets /path/to/python]

The prompt corpus is real-looking agent traffic: chat bodies whose messages carry this repository's own source
files (code, docs, JSON), as read_file tool results do. One thread, so the figure is per core. With
`--detect-secrets PYTHON` the same text is also run through detect-secrets' default plugins in that
interpreter (it is not a dependency of the project; install it in a separate venv to compare).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from exporter.scanner import ScanJob, scan_job

ROOT = Path(__file__).resolve().parent.parent
KEY = b"b" * 32

_DETECT_SECRETS = r"""
import json, sys, time
from detect_secrets.core.scan import _process_line_based_plugins
from detect_secrets.settings import default_settings
from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
text = sys.stdin.read()
lines = text.splitlines()
with default_settings():
    from detect_secrets.settings import get_plugins
    plugins = get_plugins()
    start = time.process_time()
    hits = list(_process_line_based_plugins(list(enumerate(lines, 1)), filename="prompt.txt"))
    spent = time.process_time() - start
print(json.dumps({"seconds": spent, "hits": len(hits), "plugins": len(plugins)}))
"""


def corpus(megabytes: float) -> list[bytes]:
    """Chat request bodies of ~64 KB each (a read_file result per body) until `megabytes` are reached."""
    files = sorted(
        p for p in ROOT.glob("**/*") if p.suffix in (".py", ".md", ".json", ".yaml") and ".venv" not in p.parts
    )
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files if p.stat().st_size < 200_000]
    bodies: list[bytes] = []
    total = 0
    i = 0
    while total < megabytes * 1024 * 1024:
        chunk = ""
        while len(chunk) < 64 * 1024:
            chunk += texts[i % len(texts)]
            i += 1
        doc = {
            "model": "gpt-4.1",
            "messages": [
                {"role": "user", "content": "Refactor this"},
                {"role": "tool", "tool_call_id": "c1", "content": chunk},
            ],
        }
        body = json.dumps(doc).encode()
        bodies.append(body)
        total += len(body)
    return bodies


def measure(bodies: list[bytes]) -> tuple[float, int]:
    """Seconds of CPU for scanning every body once, and the findings."""
    start = time.process_time()
    found = 0
    for body in bodies:
        found += len(scan_job(ScanJob(0.0, "u", "vscode", "chat_agent", None, None, None, body), KEY))
    return time.process_time() - start, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=8.0, help="megabytes of request bodies to scan")
    parser.add_argument("--detect-secrets", default="", help="a Python with detect-secrets installed, to compare")
    args = parser.parse_args(argv)
    bodies = corpus(args.mb)
    size = sum(len(b) for b in bodies) / 1024 / 1024
    seconds, found = measure(bodies)
    print(f"this project: {size:.1f} MB in {seconds:.2f} s CPU = {size / seconds:.1f} MB/s per core, {found} findings")
    if args.detect_secrets:
        text = "\n".join(json.loads(b)["messages"][1]["content"] for b in bodies)
        out = subprocess.run(
            [args.detect_secrets, "-c", _DETECT_SECRETS], input=text, capture_output=True, text=True, check=True
        )
        got = json.loads(out.stdout)
        mb = len(text.encode()) / 1024 / 1024
        print(
            f"detect-secrets ({got['plugins']} default plugins): {mb:.1f} MB in {got['seconds']:.2f} s CPU = "
            f"{mb / got['seconds']:.1f} MB/s per core, {got['hits']} findings"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
