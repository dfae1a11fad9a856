"""Tests of the `copilot-proxy-insight` command: defaults, --version, --help, subcommands, export-config."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from mitmproxy import version as mitmproxy_version

from exporter import __version__, cli
from exporter.hooks import CopilotInsight

REPO = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "copilot-proxy-insight"


def test_build_args_puts_the_addon_and_the_defaults_before_the_users_arguments() -> None:
    args = cli.build_args(["-p", "3128"])
    assert args[:2] == ["-s", str(REPO / "exporter" / "addon.py")]
    assert args[2:] == ["--set", "listen_host=127.0.0.1", "--set", "flow_detail=0", "-p", "3128"]


@pytest.mark.parametrize(
    ("user_args", "kept_default"),
    [
        (["--set", "listen_host=0.0.0.0"], "flow_detail=0"),
        (["--set=listen_host=0.0.0.0"], "flow_detail=0"),
        (["--listen-host", "10.0.0.5"], "flow_detail=0"),
        (["--listen-host=10.0.0.5"], "flow_detail=0"),
        (["--set", "flow_detail=3"], "listen_host=127.0.0.1"),
        (["--flow-detail", "2"], "listen_host=127.0.0.1"),
    ],
)
def test_a_default_the_user_sets_is_not_passed(user_args: list[str], kept_default: str) -> None:
    """mitmproxy refuses two `--set` of one option, so a default the user gives is left out entirely."""
    args = cli.build_args(user_args)
    assert args == ["-s", str(cli.ADDON), "--set", kept_default, *user_args]


@pytest.mark.parametrize(
    "user_args",
    [
        ["--set", "copilot_listen_host_note=x"],  # another option whose name merely contains it
        ["--set", "proxyauth=listen_host=1"],  # the value, not the name
        ["--listen-hostile", "x"],
        ["-s", "--set"],
    ],
)
def test_sets_option_looks_at_option_names_only(user_args: list[str]) -> None:
    assert not cli.sets_option(user_args, "listen_host")


def test_version_names_the_exporter_and_mitmproxy(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"copilot-proxy-insight {__version__}"
    assert out[1] == f"mitmproxy {mitmproxy_version.VERSION}"
    assert out[2].startswith("Python 3.")


def test_help_mentions_copilot_the_options_and_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"copilot-proxy-insight {__version__}: ")
    assert "GitHub Copilot" in out
    assert "copilot-proxy-insight options" in out and "copilot_* options" in out
    assert "copilot-proxy-insight --options" in out
    for sub in ("export-config DIR", "rebuild", "report", "reconcile", "--version"):
        assert f"copilot-proxy-insight {sub}" in out
    assert "listen_host=127.0.0.1" in out and "flow_detail=0" in out and "termlog_verbosity" in out
    # mitmdump's own options follow, under this command's name.
    assert "usage: copilot-proxy-insight [options] [filter]" in out
    assert "--listen-host HOST" in out and "--set option[=value]" in out


def test_options_lists_every_copilot_option_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["options"]) == 0
    out = capsys.readouterr().out
    listed = yaml.safe_load(out)
    from mitmproxy.test import taddons

    addon = CopilotInsight()
    with taddons.context(addon) as tctx:
        names = {name for name in tctx.options.keys() if name.startswith("copilot_")}  # noqa: SIM118
        defaults = {name: tctx.options.default(name) for name in names}
    assert set(listed) == names
    assert listed["copilot_metrics_port"] == defaults["copilot_metrics_port"] == 9180
    assert "listen_host" not in listed
    assert "Port of the Prometheus /metrics endpoint" in out


def test_options_takes_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["options", "extra"]) == 2
    assert "usage: copilot-proxy-insight options" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["report", "reconcile"])
def test_report_and_reconcile_dispatch_to_their_modules(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    calls: list[list[str]] = []
    module = types.ModuleType(f"exporter.{name}")

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 3

    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, f"exporter.{name}", module)
    assert cli.main([name, "--since", "2026-11-01", "--out", "x.html"]) == 3
    assert calls == [["--since", "2026-11-01", "--out", "x.html"]]


def test_a_missing_subcommand_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "exporter.reconcile", None)
    with pytest.raises(SystemExit, match=r"this installation has no exporter\.reconcile module"):
        cli.main(["reconcile"])


def test_rebuild_is_an_alias_of_copilot_proxy_insight_rebuild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (events / "copilot-events_2026-11-24.jsonl").write_text("")
    assert cli.main(["rebuild", "--data-dir", str(tmp_path), "2026-11-24"]) == 0
    assert (tmp_path / "metrics" / "copilot-usage_2026-11-24.json").exists()
    assert cli.main(["rebuild", "--data-dir", str(tmp_path), "2026-11-25"]) == 1
    assert "2026-11-25: no event log at" in capsys.readouterr().err


def bundled_names() -> set[str]:
    names = {f"alerts/{p.name}" for p in (REPO / "alerts").glob("*.yaml")}
    names |= {f"alerts/tests/{p.name}" for p in (REPO / "alerts" / "tests").glob("*.yaml")}
    names |= {f"dashboards/{p.name}" for p in (REPO / "dashboards").glob("*.json")}
    return names


def test_export_config_writes_the_shipped_dashboards_and_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["export-config", str(tmp_path / "out")]) == 0
    written = {str(Path(line).relative_to(tmp_path / "out")) for line in capsys.readouterr().out.splitlines()}
    assert written == bundled_names() and len(written) >= 8
    for name in written:
        assert (tmp_path / "out" / name).read_text() == (REPO / name).read_text(), name


def test_export_config_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out"
    (target / "dashboards").mkdir(parents=True)
    (target / "dashboards" / "copilot-usage.json").write_text("my edits")
    assert cli.main(["export-config", str(target)]) == 1
    assert "pass --force to overwrite" in capsys.readouterr().err
    assert (target / "dashboards" / "copilot-usage.json").read_text() == "my edits"
    assert not (target / "alerts").exists(), "nothing is written when one file is in the way"
    assert cli.main(["export-config", "--force", str(target)]) == 0
    shipped = (REPO / "dashboards" / "copilot-usage.json").read_text()
    assert (target / "dashboards" / "copilot-usage.json").read_text() == shipped


def test_export_config_points_every_runbook_url_at_the_given_base(tmp_path: Path) -> None:
    base = "https://git.example.com/platform/copilot-proxy-insight/-/blob/main/docs/alerts.md"
    assert cli.main(["export-config", "--runbook-base", base + "/", str(tmp_path)]) == 0
    rules = yaml.safe_load((tmp_path / "alerts" / "copilot-rules.yaml").read_text())
    urls = [r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert urls and all(url.startswith(base + "#") for url in urls)
    for test_file in (tmp_path / "alerts" / "tests").glob("*.yaml"):
        assert cli.RUNBOOK_BASE not in test_file.read_text(), test_file.name


@pytest.mark.parametrize("base", ["docs/alerts.md", "ftp://x/alerts.md", "https://x/alerts.md#top", "https:///a"])
def test_export_config_rejects_a_base_that_is_not_an_absolute_url(tmp_path: Path, base: str) -> None:
    assert cli.main(["export-config", "--runbook-base", base, str(tmp_path)]) == 1
    assert not any(tmp_path.iterdir())


def test_the_console_script_is_installed_and_answers_version() -> None:
    result = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"copilot-proxy-insight {__version__}\nmitmproxy ")


# -- ./dev: one install for run and test ------------------------------------------------------------------


@pytest.fixture
def dev_checkout(tmp_path: Path) -> Path:
    """A copy of `dev` next to a pyproject.toml and exporter/__init__.py, with a .venv whose python logs every
    pip call (and does nothing else for pip) and whose console script echoes its arguments."""
    root = tmp_path / "checkout"
    (root / "exporter").mkdir(parents=True)
    (root / "dev").write_text((REPO / "dev").read_text())
    (root / "dev").chmod(0o755)
    (root / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (root / "exporter" / "__init__.py").write_text(f'__version__ = "{__version__}"\n')
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(
        "#!/bin/sh\n"
        'case "$*" in *"-m pip"*) echo "$*" >> "$(dirname "$0")/../pip.log"; exit 0;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    (bin_dir / "copilot-proxy-insight").write_text('#!/bin/sh\necho "console script: $*"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    return root


def run_dev(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(root / "dev"), *args], capture_output=True, text=True, timeout=120, check=False)


def pip_calls(root: Path) -> list[str]:
    log = root / ".venv" / "pip.log"
    return [line for line in log.read_text().splitlines() if "install" in line] if log.exists() else []


def test_dev_installs_once_for_run_and_test_alternating(dev_checkout: Path) -> None:
    root = dev_checkout
    assert run_dev(root, "setup").returncode == 0
    calls = pip_calls(root)
    assert calls[-1].endswith("install --quiet -e .[dev]"), calls
    before = len(calls)
    for args in (("run", "--version"), ("options",), ("setup",), ("run",), ("exec", "true")):
        result = run_dev(root, *args)
        assert result.returncode == 0, result.stderr
    assert len(pip_calls(root)) == before, "nothing reinstalled while pyproject.toml is unchanged"
    assert run_dev(root, "run", "--version").stdout == "console script: --version\n"
    assert run_dev(root, "rebuild", "--data-dir", "logs").stdout == "console script: rebuild --data-dir logs\n"


def test_dev_run_alone_installs_without_test_tools_and_setup_adds_them(dev_checkout: Path) -> None:
    root = dev_checkout
    assert run_dev(root, "run").returncode == 0
    assert pip_calls(root)[-1].endswith("install --quiet -e ."), pip_calls(root)
    n = len(pip_calls(root))
    assert run_dev(root, "run").returncode == 0 and len(pip_calls(root)) == n
    assert run_dev(root, "setup").returncode == 0
    assert pip_calls(root)[-1].endswith("install --quiet -e .[dev]")
    # A changed pyproject.toml reinstalls, keeping the test tools even for `run`.
    with (root / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert run_dev(root, "run").returncode == 0
    assert pip_calls(root)[-1].endswith("install --quiet -e .[dev]")


def test_dev_exec_puts_the_venv_first_on_path(dev_checkout: Path) -> None:
    result = run_dev(dev_checkout, "exec", "copilot-proxy-insight", "--options")
    assert result.returncode == 0 and result.stdout == "console script: --options\n", result.stderr
    assert run_dev(dev_checkout, "exec").returncode == 2
