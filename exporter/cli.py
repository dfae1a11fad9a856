"""The `copilot-proxy-insight` command: mitmdump with the addon loaded, plus the project's subcommands."""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter import __version__

ADDON = Path(__file__).resolve().with_name("addon.py")

# Defaults of the console script where plain mitmdump's do not suit a proxy for a whole team: loopback only,
# so the quick start is no open proxy; no per-flow lines, which are noise for hundreds of developers.
# Passed as `--set` only when the user's arguments do not set the option themselves (mitmproxy refuses two
# `--set` of one option); `config.yaml` in the confdir still wins, mitmproxy applies it over `--set`.
DEFAULTS = {"listen_host": "127.0.0.1", "flow_detail": "0"}
# mitmproxy logs every client and server connect/disconnect at INFO through this logger: as noisy as per-flow
# lines on a busy proxy. Kept at WARNING (TLS failures and the like still show) unless the user asks for
# detail with flow_detail, termlog_verbosity or -v.
CONNECTION_LOGGER = "mitmproxy.proxy.server"

# Subcommand -> "module:function" called with the remaining arguments; imported only when used.
SUBCOMMANDS = {
    "report": "exporter.report:main",
    "reconcile": "exporter.reconcile:main",
    "rebuild": "exporter.rebuild:main",
    "export-config": "exporter.cli:export_config_main",
    "options": "exporter.cli:print_copilot_options",
}

# The one base of every runbook_url in alerts/copilot-rules.yaml (and the expectations in alerts/tests/):
# docs/alerts.md as published with the project. `export-config --runbook-base` points them elsewhere.
RUNBOOK_BASE = "https://github.com/copilot-proxy-insight/copilot-proxy-insight/blob/main/docs/alerts.md"

HELP_HEADER = f"""\
copilot-proxy-insight {__version__}: mitmproxy (mitmdump) with the Copilot Proxy Insight addon, which
turns GitHub Copilot traffic into Prometheus /metrics, a JSON event log and daily usage summaries
without changing it.

usage: copilot-proxy-insight [mitmdump options]   start the proxy (every mitmdump option below works)
       copilot-proxy-insight options              list the exporter's copilot_* options with their help
       copilot-proxy-insight --options            list every option (mitmproxy's and copilot_*) with its help
       copilot-proxy-insight export-config DIR    write the Grafana dashboards and Prometheus alert rules to DIR
       copilot-proxy-insight rebuild [DAY ...]    rebuild daily summaries from the event log
       copilot-proxy-insight report ...           usage report (see: copilot-proxy-insight report --help)
       copilot-proxy-insight reconcile ...        compare with GitHub's Copilot usage report (reconcile --help)
       copilot-proxy-insight --version            this version and mitmproxy's

Set options with --set NAME=VALUE, e.g. --set proxyauth=@/etc/copilot/htpasswd --set copilot_data_dir=/data.
Defaults of this command that differ from plain mitmdump: listen_host=127.0.0.1 (loopback only: set
listen_host=0.0.0.0 together with proxyauth to serve other machines) and flow_detail=0 (no per-flow lines;
--set flow_detail=1..4 brings them back, termlog_verbosity sets the log level).

mitmdump's own help follows.
"""


def sets_option(argv: Sequence[str], name: str) -> bool:
    """Whether mitmdump arguments set option `name`: `--set name=…`, `--set=name=…` or `--name-with-dashes …`."""
    flag = "--" + name.replace("_", "-")
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--set" and i + 1 < len(argv) else arg.removeprefix("--set=")
        if (arg == "--set" or arg.startswith("--set=")) and value.partition("=")[0] == name:
            return True
        if arg == flag or arg.startswith(flag + "="):
            return True
    return False


def build_args(argv: Sequence[str]) -> list[str]:
    """mitmdump's arguments: the addon script, this command's defaults the user did not set, the user's arguments."""
    args = ["-s", str(ADDON)]
    for name, value in DEFAULTS.items():
        if not sets_option(argv, name):
            args += ["--set", f"{name}={value}"]
    return [*args, *argv]


def help_text() -> str:
    """`--help`: what this command is and its subcommands, then mitmdump's own options."""
    from mitmproxy import options
    from mitmproxy.tools import cmdline

    # mitmdump's parser, not mitmdump itself: its --help path exits with status 1 from inside asyncio.
    parser: argparse.ArgumentParser = cmdline.mitmdump(options.Options())  # type: ignore[no-untyped-call]
    parser.prog = "copilot-proxy-insight"
    return f"{HELP_HEADER}\n{parser.format_help()}"


def version_text() -> str:
    """`--version`: the exporter's version, then mitmproxy's and Python's."""
    from mitmproxy import version as mitmproxy_version

    python = sys.version.split()[0]
    return f"copilot-proxy-insight {__version__}\nmitmproxy {mitmproxy_version.VERSION}\nPython {python}"


def resolve(target: str) -> Callable[[list[str]], int]:
    """The function named by `module:function`, imported now."""
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise SystemExit(f"copilot-proxy-insight: this installation has no {module_name} module") from e
    func: Callable[[list[str]], int] = getattr(module, function)
    return func


def print_copilot_options(argv: list[str]) -> int:
    """`copilot-proxy-insight options`: the exporter's options with type, default and help, as YAML."""
    if argv:
        print("usage: copilot-proxy-insight options", file=sys.stderr)
        return 2
    from mitmproxy import addonmanager, optmanager

    from exporter.hooks import CopilotInsight

    class _Master:  # the one attribute mitmproxy's Loader uses
        options: Any = optmanager.OptManager()

    master = _Master()
    addon = CopilotInsight()
    loader = addonmanager.Loader(master)  # type: ignore[no-untyped-call]
    addon.load(loader)
    addon.interception.load(loader)  # the nested interception addon declares copilot_intercept, copilot_hosts
    optmanager.dump_defaults(master.options, sys.stdout)
    return 0


def bundled() -> Traversable:
    """The dashboards and alert rules shipped inside the package (exporter/bundled/)."""
    return importlib.resources.files("exporter").joinpath("bundled")


def _bundled_files(root: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.startswith((".", "__")):
            continue
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _bundled_files(entry, f"{name}/")
        elif entry.name.endswith((".json", ".yaml")):
            yield name, entry


def check_runbook_base(base: str) -> str:
    """An absolute http(s) URL of the runbook page, without a fragment (each alert adds its own)."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or "#" in base:
        raise ValueError(f"--runbook-base must be an absolute http(s) URL without '#', not {base!r}")
    return base.rstrip("/")


def export_config(target: Path, runbook_base: str | None = None, force: bool = False) -> list[Path]:
    """Writes the bundled alerts/ and dashboards/ under `target`; returns the files written.

    Refuses (ValueError, nothing written) when a file exists and `force` is off, so that local edits are
    never lost by accident.
    """
    base = check_runbook_base(runbook_base) if runbook_base else None
    files = list(_bundled_files(bundled()))
    if not files:
        raise ValueError("this installation has no bundled dashboards or alert rules")
    existing = [target / name for name, _ in files if (target / name).exists()]
    if existing and not force:
        raise ValueError(f"{len(existing)} file(s) exist, e.g. {existing[0]}; pass --force to overwrite them")
    written = []
    for name, source in files:
        text = source.read_text(encoding="utf-8")
        if base is not None and name.startswith("alerts/"):
            text = text.replace(f"{RUNBOOK_BASE}#", f"{base}#")
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def export_config_main(argv: list[str]) -> int:
    """`copilot-proxy-insight export-config DIR`: the dashboards and alert rules, as files for Grafana/Prometheus."""
    parser = argparse.ArgumentParser(
        prog="copilot-proxy-insight export-config",
        description="Write the Grafana dashboards (DIR/dashboards/*.json) and the Prometheus alert rules with "
        "their promtool unit tests (DIR/alerts/) shipped with this version.",
    )
    parser.add_argument("dir", type=Path, help="target directory (created when missing)")
    parser.add_argument(
        "--runbook-base",
        help=f"URL where your team reads docs/alerts.md; every runbook_url becomes <URL>#<alert> "
        f"(default: {RUNBOOK_BASE})",
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    args = parser.parse_args(argv)
    try:
        written = export_config(args.dir, args.runbook_base, args.force)
    except (ValueError, OSError) as e:
        print(f"copilot-proxy-insight export-config: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        return resolve(SUBCOMMANDS[args[0]])(args[1:]) or 0
    if "--version" in args:
        print(version_text())
        return 0
    if "-h" in args or "--help" in args:
        print(help_text())
        return 0
    if not (sets_option(args, "flow_detail") or sets_option(args, "termlog_verbosity") or _verbose(args)):
        logging.getLogger(CONNECTION_LOGGER).setLevel(logging.WARNING)
    from mitmproxy.tools.main import mitmdump

    return mitmdump(build_args(args)) or 0


def _verbose(args: Sequence[str]) -> bool:
    return any(a in ("-v", "--verbose") or re.fullmatch(r"-v+", a) is not None for a in args)


if __name__ == "__main__":
    raise SystemExit(main())
