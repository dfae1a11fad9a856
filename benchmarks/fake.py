"""The benchmark's fake Copilot backend, as a process: `tests/e2e/fakebackend.py` serving `traffic.EXCHANGES`.

`python -m benchmarks.fake --ca-out PATH [--port N] [--slow-delay-ms 50]` prints
`fakebackend ready port=<port> ca=<path>` once it listens. It is mitmdump's upstream proxy (CONNECT,
TLS per SNI with per-host certificates from its test CA) and, for the "direct" runs, the client's.
Every answer streams without delay except the slow completion's (`--slow-delay-ms` between events).
Its request records (the in-process test API, not used here) are dropped every second, so it does not grow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import traffic
from tests.e2e.fakebackend import FakeCopilotBackend, Script


class BenchBackend(FakeCopilotBackend):
    """The test fake with a per-sample event delay: only the slow completion's events are spaced."""

    def __init__(self, port: int, slow_delay: float) -> None:
        super().__init__(port, exchanges=traffic.EXCHANGES, event_delay=0.0)
        self.slow_delay = slow_delay

    def _choose(self, method: str, host: str, path: str, body: bytes, request_id: str | None) -> tuple[Script, str]:
        script, source = super()._choose(method, host, path, body, None)
        if source == f"sample:{traffic.SLOW_NAME}":
            script = dataclasses.replace(script, delay=self.slow_delay)
        return script, source


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ca-out", required=True, type=Path)
    parser.add_argument("--slow-delay-ms", type=float, default=50.0)
    args = parser.parse_args(argv)

    async def run() -> None:
        backend = BenchBackend(args.port, args.slow_delay_ms / 1000)
        ready = asyncio.Event()
        task = asyncio.create_task(backend.serve(on_ready=ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            await task
            return
        backend.ca.write_ca(args.ca_out)
        print(f"fakebackend ready port={backend.port} ca={args.ca_out}", flush=True)

        async def forget() -> None:
            while True:
                await asyncio.sleep(1.0)
                backend.reset()  # drop the records of what was received and sent

        forgetter = asyncio.create_task(forget())
        loop = asyncio.get_running_loop()
        stop = backend._stop_event
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set if stop is not None else task.cancel)
        try:
            await task
        finally:
            forgetter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forgetter
            if backend._own_dir is not None:
                backend._own_dir.cleanup()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
