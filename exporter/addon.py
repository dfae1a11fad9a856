"""The mitmproxy script: `mitmdump -s exporter/addon.py` (or the `copilot-proxy-insight` command) loads this.

It runs the `exporter` package that sits beside this file, never another copy that happens to be installed:
mitmproxy loads scripts outside `sys.modules` (with its own `__package__`), so the checkout is put first on
the import path here, and a different `exporter` already imported is refused with one clear line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
if str(_PACKAGE.parent) not in sys.path:
    sys.path.insert(0, str(_PACKAGE.parent))

import exporter  # noqa: E402 (after the path set-up above)

_loaded = Path(exporter.__file__).resolve().parent
if _loaded != _PACKAGE:
    # An ERROR while mitmdump starts makes it exit: better than silently running other code.
    logging.getLogger("copilot_proxy_insight").error(
        "copilot-proxy-insight: %s would run the exporter package at %s, not the one beside it; start it with "
        "that copy's own command, or install this checkout (pip install -e %s)",
        Path(__file__).resolve(),
        _loaded,
        _PACKAGE.parent,
    )
    addons: list[object] = []
else:
    from exporter.hooks import CopilotInsight

    addons = [CopilotInsight()]
