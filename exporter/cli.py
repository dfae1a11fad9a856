"""The `copilot-proxy-insight` command: mitmdump with the addon loaded; every mitmdump option passes through."""

from __future__ import annotations

import sys
from pathlib import Path

ADDON = Path(__file__).resolve().with_name("addon.py")


def build_args(argv: list[str]) -> list[str]:
    """mitmdump's arguments: the addon script first, then the user's options unchanged."""
    return ["-s", str(ADDON), *argv]


def main(argv: list[str] | None = None) -> int:
    from mitmproxy.tools.main import mitmdump

    args = build_args(sys.argv[1:] if argv is None else argv)
    return mitmdump(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
