"""Packaging: one version, the wheel's metadata and data, and a wheel built from the sdist that installs into a
fresh venv, where the console script starts and serves /metrics."""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from exporter import __version__
from tests.e2e.harness import Mitmdump, free_port

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def bundled_names() -> set[str]:
    """The dashboards, rules and rule tests of the checkout, as paths inside the package."""
    files = [*REPO.glob("alerts/*.yaml"), *REPO.glob("alerts/tests/*.yaml"), *REPO.glob("dashboards/*.json")]
    return {f"exporter/bundled/{p.relative_to(REPO).as_posix()}" for p in files}


def test_the_version_lives_in_one_place() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    # The compose stack tags the image it builds with the same version.
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    assert compose["services"]["copilot-proxy"]["image"] == f"copilot-proxy-insight:{__version__}"


def test_opentelemetry_over_http_is_a_core_dependency_and_the_extras_stay() -> None:
    project = PYPROJECT["project"]
    core = " ".join(project["dependencies"])
    assert "opentelemetry-sdk" in core and "opentelemetry-exporter-otlp-proto-http" in core
    extras = project["optional-dependencies"]
    assert extras["otel"] == [], "kept as an empty alias so that '.[otel]' still installs"
    assert any("opentelemetry-exporter-otlp-proto-grpc" in d for d in extras["otel-grpc"])


def test_bundled_links_point_at_the_shipped_dashboards_and_rules() -> None:
    for name in ("alerts", "dashboards"):
        link = REPO / "exporter" / "bundled" / name
        assert link.is_symlink() and link.resolve() == REPO / name


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build`: the sdist, then the wheel built from that sdist (so both are proven)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def wheel_path(dist: Path) -> Path:
    (wheel,) = dist.glob("*.whl")
    return wheel


def test_the_wheel_carries_the_metadata_scripts_and_data(dist: Path) -> None:
    wheel = wheel_path(dist)
    assert wheel.name == f"copilot_proxy_insight-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"copilot_proxy_insight-{__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert metadata["Version"] == __version__
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("opentelemetry-sdk") and "extra ==" not in r for r in requires), requires
    assert {"otel", "otel-grpc", "dev"} <= set(metadata.get_all("Provides-Extra") or [])
    assert "copilot-proxy-insight = exporter.cli:main" in entry_points
    assert "copilot-proxy-insight-rebuild = exporter.rebuild:main" in entry_points
    assert bundled_names() <= names, bundled_names() - names
    assert {"exporter/cli.py", "exporter/startup.py", "exporter/addon.py", "exporter/sinks/prometheus.py"} <= names
    assert not [n for n in names if n.startswith("tests/")], "tests stay out of the wheel"


def test_the_sdist_carries_the_data_as_files(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    root = f"copilot_proxy_insight-{__version__}"
    with tarfile.open(sdist) as t:
        members = {m.name.removeprefix(root + "/"): m for m in t.getmembers()}
    for name in bundled_names():
        assert name in members and members[name].isfile(), f"{name} missing or not a file in the sdist"


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv (the Python of the test run) with the wheel and its dependencies from the index."""
    env_dir = tmp_path_factory.mktemp("venv") / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel_path(dist))],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield env_dir


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: the fresh venv must not see the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_installed_console_script_answers_version(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(installed / "bin" / "copilot-proxy-insight"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2][0] == f"copilot-proxy-insight {__version__}"
    assert result.stdout.splitlines()[1].startswith("mitmproxy 12.")
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import exporter; print(exporter.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed), where


def test_the_installed_package_exports_its_dashboards_and_rules(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "config"
    result = subprocess.run(
        [str(installed / "bin" / "copilot-proxy-insight"), "export-config", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    for name in bundled_names():
        relative = name.removeprefix("exporter/bundled/")
        assert (out / relative).read_bytes() == (REPO / relative).read_bytes(), relative


def test_the_installed_console_script_starts_and_serves_metrics(installed: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    workdir = tmp_path / "work"
    workdir.mkdir()
    proxy = Mitmdump(
        None,
        tmp_path / "mitmdump",
        executable=installed / "bin" / "copilot-proxy-insight",
        addon=None,  # the console script loads the installed addon
        options={"copilot_data_dir": tmp_path / "data", "copilot_metrics_port": metrics_port},
        cwd=workdir,
        repo_on_path=False,
        env={"VIRTUAL_ENV": str(installed)},
    )
    with proxy:
        body = httpx.get(proxy.metrics_url, timeout=5, trust_env=False).text
        assert re.search(rf'copilot_exporter_build_info\{{[^}}]*version="{re.escape(__version__)}"', body), body[:500]
        log = proxy.wait_for_log("point IDEs at the proxy")
        assert f"http://<user>:<password>@127.0.0.1:{proxy.port}" in log
        assert f"/metrics on http://127.0.0.1:{metrics_port}/metrics" in log
        assert f"data dir {tmp_path / 'data'}" in log
    assert proxy.returncode == 0, proxy.log_text()[-3000:]


def test_pipx_installs_the_wheel_as_an_application(dist: Path, tmp_path: Path) -> None:
    """`pipx install` (its own venv, the console scripts linked into a bin dir) gives working commands."""
    env = {
        **clean_env(),
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipx", "install", str(wheel_path(dist))],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for script in ("copilot-proxy-insight", "copilot-proxy-insight-rebuild"):
        assert (tmp_path / "bin" / script).exists(), script
    version = subprocess.run(
        [str(tmp_path / "bin" / "copilot-proxy-insight"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert version.returncode == 0 and version.stdout.startswith(f"copilot-proxy-insight {__version__}\n")
