"""Hardening #5 under a real mitmdump: a flood of made-up user names cannot blind /metrics for real users."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, free_port, proxy_client, send
from tests.e2e.test_e2e import metric, parse_metrics, scrape, variant

pytestmark = pytest.mark.e2e

MAX_USERS = 20
JUNK = 2 * MAX_USERS  # twice the cap of made-up names, none of them making a model call


def _junk_post() -> samples.Exchange:
    """A telemetry post that names an editor (so it enters the client inventory) but is no model call."""
    ex = variant(samples.TELEMETRY)
    return replace(ex, request_headers=(*ex.request_headers, ("Editor-Version", "vscode/1.111.0")))


def test_made_up_names_never_displace_real_users(tmp_path: Path) -> None:
    with FakeCopilotBackend() as backend:
        proxy = Mitmdump(
            backend,
            tmp_path / "m",
            proxyauth="any",
            options={
                "copilot_data_dir": tmp_path / "data",
                "copilot_metrics_port": free_port(),
                "copilot_max_users": MAX_USERS,
                "connection_strategy": "lazy",
            },
        ).start()
        try:
            for i in range(JUNK):
                ex = _junk_post()
                backend.script_exchange(ex)
                with proxy_client(proxy.port, f"junk-{i:03d}", "x", proxy.ca_cert_path) as client:
                    assert send(client, ex).status == 200
            real = {
                "alice": variant(samples.BY_NAME["vscode_completion"]),
                "bob": variant(samples.BY_NAME["vscode_completion"]),
            }
            for user, ex in real.items():
                backend.script_exchange(ex)
                with proxy_client(proxy.port, user, "x", proxy.ca_cert_path) as client:
                    assert send(client, ex).status == 200

            def both_counted() -> dict[tuple[str, ...], int] | None:
                got = metric(parse_metrics(scrape(proxy.metrics_url)), "copilot_requests_total", ("user",))
                return dict(got) if sum(got.values()) == 2 else None

            requests = proxy.wait_for(both_counted, 10.0, "the two real users' completions")
            parsed = parse_metrics(scrape(proxy.metrics_url))
        finally:
            assert proxy.stop() == 0
    # The real users keep their own series although the flood came first.
    assert requests == {("alice",): 1, ("bob",): 1}
    inventory = metric(parsed, "copilot_client_info", ("user",))
    assert ("alice",) in inventory and ("bob",) in inventory
    named_junk = {u for (u,) in inventory if u.startswith("junk-")}
    assert len(named_junk) <= MAX_USERS - 2  # the real users took two made-up names' slots (and their series)
    assert inventory[("other",)] >= 1  # names past the cap were folded, not given slots
