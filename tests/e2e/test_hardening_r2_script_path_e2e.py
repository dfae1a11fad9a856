"""Hardening round 2, item 15, under real mitmdump: `mitmdump -s <checkout>/exporter/addon.py` runs the code
beside the script, or refuses clearly.

mitmproxy loads a script with `__package__` set to its own script package, so the old path set-up in
`addon.py` (`if __package__ in (None, ""): sys.path.insert(...)`) never ran, and a second checkout (or an
edited copy) silently ran whatever `exporter` was importable first: the installed one (here: this checkout,
installed editable and on PYTHONPATH). The copy below differs from this checkout only in its `__version__`,
which `copilot_exporter_build_info` shows, so the build info tells which code runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import REPO_ROOT, Mitmdump, ProcessDied, free_port, proxy_client, send
from tests.e2e.test_e2e import metric, parse_metrics, scrape, variant

pytestmark = pytest.mark.e2e

COPY_VERSION = "0.0.0+hardening-r2-copy"
REFUSAL = "would run the exporter package at"


def _copy_of_the_checkout(tmp_path: Path) -> Path:
    """A second checkout: this one's `exporter` package with another `__version__`; returns its addon.py."""
    package = tmp_path / "other-checkout" / "exporter"
    shutil.copytree(REPO_ROOT / "exporter", package, ignore=shutil.ignore_patterns("__pycache__"))
    init = package / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    init.write_text(text.replace('__version__ = "', f'__version__ = "{COPY_VERSION}"  # was "', 1))
    return package / "addon.py"


def _versions(proxy: Mitmdump) -> set[str]:
    parsed = parse_metrics(scrape(proxy.metrics_url))
    return {v for (v,) in metric(parsed, "copilot_exporter_build_info", ("version",))}


def test_the_script_of_another_checkout_runs_that_checkouts_code(tmp_path: Path) -> None:
    addon = _copy_of_the_checkout(tmp_path)
    with FakeCopilotBackend() as backend:
        proxy = Mitmdump(
            backend,
            tmp_path / "m",
            addon=addon,
            proxyauth="any",
            # This checkout is importable as `exporter` (PYTHONPATH and the editable install) and the process
            # starts in it: the copy's script must still run the copy's modules.
            repo_on_path=True,
            options={
                "copilot_data_dir": tmp_path / "data",
                "copilot_metrics_port": free_port(),
                "connection_strategy": "lazy",
            },
        ).start()
        try:
            assert _versions(proxy) == {COPY_VERSION}  # before the fix: {"0.1.0"}, this checkout's
            ex = variant(samples.VSCODE_COMPLETION)
            backend.script_exchange(ex)
            with proxy_client(proxy.port, "alice", "x", proxy.ca_cert_path) as client:
                assert send(client, ex).status == 200
            requests = proxy.wait_for(
                lambda: metric(parse_metrics(scrape(proxy.metrics_url)), "copilot_requests_total", ("user",)),
                10.0,
                "the completion counted by the copy",
            )
            assert requests == {("alice",): 1}
        finally:
            assert proxy.stop() == 0
    assert REFUSAL not in proxy.log_text()


def test_two_checkouts_in_one_mitmdump_are_refused_with_one_clear_line(tmp_path: Path) -> None:
    """The second script would run the first one's package (Python imports `exporter` once): refused."""
    addon = _copy_of_the_checkout(tmp_path)
    with FakeCopilotBackend() as backend:
        proxy = Mitmdump(
            backend,
            tmp_path / "m",
            proxyauth="any",
            extra_args=["-s", str(addon)],  # after this checkout's own `-s exporter/addon.py`
            options={"copilot_data_dir": tmp_path / "data", "copilot_metrics_port": free_port()},
        )
        with pytest.raises(ProcessDied):
            proxy.start()  # mitmdump exits: an error logged during start-up
        log = proxy.log_text()
    assert proxy.returncode not in (None, 0)
    refusals = [line for line in log.splitlines() if REFUSAL in line]
    assert len(refusals) == 1, log[-3000:]
    assert str(addon.resolve()) in refusals[0] and str(REPO_ROOT / "exporter") in refusals[0]
    assert "pip install -e" in refusals[0]
