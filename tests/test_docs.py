"""Checks of the admin docs against the code: option tables against the addon's options, metric and log field
tables against the metric table and UsageEvent, examples against what the sinks really write, links.

The generated tables are printed by `.venv/bin/python -m tests.test_docs options|mitmproxy|metrics`."""

from __future__ import annotations

import html
import io
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, get_type_hints

import pytest
import yaml
from mitmproxy.addons import default_addons
from mitmproxy.addons.core import Core
from mitmproxy.test import taddons
from mitmproxy.utils.htpasswd import HtpasswdFile

from exporter import metricdefs as md
from exporter.classify import HostTable, Kind, route
from exporter.counting import Skip
from exporter.events import UsageEvent
from exporter.hooks import CopilotInsight
from exporter.sinks.daily import DaySummary
from exporter.sinks.jsonlog import JsonLogSink, log_path
from exporter.sinks.recorder import RecorderSink, Recording
from exporter.writer import BackgroundWriter, ErrorReporter
from tests import factories
from tests.test_deploy import COMPOSE, PROXY_SERVICE, compose_model, glob_match, materialize, service

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
ADMIN = DOCS / "admin-guide.md"
CLIENTS = DOCS / "clients.md"
LOGS = DOCS / "logs.md"
REFERENCE = DOCS / "reference.md"
OWN_DOCS = (ADMIN, CLIENTS, LOGS, REFERENCE)
DAY = "2026-11-24"


# -- options ----------------------------------------------------------------------------------------------


def copilot_options() -> dict[str, Any]:
    """The addon's options, as mitmproxy sees them once the addon is loaded."""
    addon = CopilotInsight()
    with taddons.context(addon) as tctx:
        return {name: opt for name, opt in tctx.options.items() if name.startswith("copilot_")}


def mitmproxy_options() -> dict[str, Any]:
    """Every option of mitmdump with the addon (mitmproxy's default addons, mitmdump's own and copilot_*)."""
    from mitmproxy.addons import dumper, termlog

    # TermLog and Dumper are what mitmdump adds (termlog_verbosity, flow_detail).
    addons = [a for a in default_addons() if not isinstance(a, Core)] + [termlog.TermLog(), dumper.Dumper()]
    with taddons.context(*addons, CopilotInsight()) as tctx:
        return dict(tctx.options.items())


_TYPES: dict[Any, str] = {
    str: "str",
    int: "int",
    bool: "bool",
    Sequence[str]: "list of str",
    Optional[str]: "str, optional",  # noqa: UP045 (mitmproxy's typespec)
    Optional[int]: "int, optional",  # noqa: UP045
}


def type_text(opt: Any) -> str:
    if opt.choices:
        return "one of " + ", ".join(f"`{c}`" if c else '`""`' for c in opt.choices)
    return _TYPES.get(opt.typespec, str(opt.typespec))


def default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, list | tuple):
        return "`[]`" if not value else "`" + ",".join(value) + "`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def from_cell(cell: str) -> str:
    return html.unescape(cell.replace("\\|", "|")).strip()


def options_table() -> str:
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for name, opt in sorted(copilot_options().items()):
        lines.append(f"| `{name}` | {type_text(opt)} | {default_text(opt.default)} | {md_cell(opt.help)} |")
    return "\n".join(lines)


def table(text: str, first_header: str) -> list[list[str]]:
    """The body rows of every markdown table whose first header cell is `first_header`, cells unescaped."""
    rows: list[list[str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = split_row(line)
        if not cells or cells[0] != first_header:
            continue
        for body in lines[i + 2 :]:
            if not body.startswith("|"):
                break
            rows.append([from_cell(c) for c in split_row(body)])
    return rows


def split_row(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def code_name(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    assert m, f"expected a `name` cell, got {cell!r}"
    return m.group(1)


# -- metrics ----------------------------------------------------------------------------------------------


def labels_text(metric: md.MetricDef) -> str:
    return ", ".join(f"`{label}`" for label in metric.labels) or "—"


def metrics_table() -> str:
    lines = ["| metric | type | labels | help |", "|---|---|---|---|"]
    for m in md.METRICS:
        lines.append(f"| `{m.exposed_name}` | {m.type.value} | {labels_text(m)} | {md_cell(m.help)} |")
    return "\n".join(lines)


def buckets_text(metric: md.MetricDef) -> str:
    return ", ".join(f"{b:g}" for b in metric.buckets)


# -- the log line ---------------------------------------------------------------------------------------------


def json_type(annotation: Any) -> str:
    text = str(annotation)
    nullable = "None" in text
    for marker, name in (
        ("TelemetryReport", "object"),
        ("tuple", "array of strings"),
        ("bool", "boolean"),
        ("int", "integer"),
        ("float", "number"),
        ("str", "string"),
    ):
        if marker in text:
            return f"{name} or null" if nullable else name
    raise AssertionError(f"no JSON type for {annotation}")


def log_field_types() -> dict[str, str]:
    """Every key a JSON log line can have, with its JSON type."""
    hints = get_type_hints(UsageEvent)
    out = {"timestamp": "string", "event": "string", "level": "string"}
    for name in UsageEvent.__dataclass_fields__:
        if name != "timestamp":
            out[name] = json_type(hints[name])
    return out


def real_log_line(**overrides: Any) -> dict[str, Any]:
    """A line exactly as the JSON log sink writes it."""
    out = io.StringIO()
    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    sink = JsonLogSink(Path("/nonexistent"), "stdout", writer, stdout=out)
    sink.log(factories.event(**overrides))
    assert writer.flush()
    line: dict[str, Any] = json.loads(out.getvalue().splitlines()[0])
    return line


# -- markdown helpers ----------------------------------------------------------------------------------------


def code_blocks(path: Path, lang: str | None = None) -> list[str]:
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"^([ \t]*)```([\w+-]*)\n(.*?)^\1```", text, re.S | re.M)
    return [textwrap.dedent(body) for _, tag, body in blocks if lang is None or tag == lang]


def json_block(path: Path, needle: str) -> Any:
    found = [b for b in code_blocks(path, "json") if needle in b]
    assert len(found) == 1, f"{path.name}: expected one json block containing {needle!r}, found {len(found)}"
    return json.loads(found[0])


def kibana_request(path: Path, method_and_path: str) -> Any:
    """The JSON body of a Kibana Dev Tools request block (`PUT _index_template/...` then JSON)."""
    for block in code_blocks(path):
        first, _, body = block.partition("\n")
        if first.strip() == method_and_path:
            return json.loads(body)
    raise AssertionError(f"{path.name}: no `{method_and_path}` request block")


def yaml_block(path: Path, needle: str) -> Any:
    found = [b for b in code_blocks(path, "yaml") if needle in b]
    assert len(found) == 1, f"{path.name}: expected one yaml block containing {needle!r}, found {len(found)}"
    return yaml.safe_load(found[0])


def slug(heading: str) -> str:
    """GitHub's heading anchor."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


# -- tests: admin guide -------------------------------------------------------------------------------------


def test_admin_guide_documents_every_option_with_its_code_default_and_help() -> None:
    options = copilot_options()
    assert options, "the addon declares no copilot_ options?"
    rows = {code_name(r[0]): r for r in table(ADMIN.read_text(encoding="utf-8"), "option")}
    documented = set(rows)
    assert documented - set(options) == set(), f"documented but not in the code: {sorted(documented - set(options))}"
    assert set(options) - documented == set(), (
        f"options missing from docs/admin-guide.md: {sorted(set(options) - documented)}; "
        "regenerate the table with `python -m tests.test_docs options`"
    )
    for name, opt in options.items():
        _, type_cell, default_cell, help_cell = rows[name]
        assert default_cell == from_cell(default_text(opt.default)), f"{name}: default {default_cell!r}"
        assert type_cell == from_cell(type_text(opt)), f"{name}: type {type_cell!r}"
        assert help_cell == " ".join(opt.help.split()), f"{name}: description differs from the option help"


def test_admin_guide_mitmproxy_options_exist_with_those_defaults() -> None:
    options = mitmproxy_options()
    rows = table(ADMIN.read_text(encoding="utf-8"), "mitmproxy option")
    assert len(rows) >= 5
    for row in rows:
        name = code_name(row[0])
        assert name in options, f"mitmproxy has no option {name}"
        assert row[1] == from_cell(type_text(options[name])), f"{name}: type {row[1]!r}"
        assert row[2] == from_cell(default_text(options[name].default)), f"{name}: default {row[2]!r}"


def set_options_in_docs() -> Iterator[tuple[Path, str, str]]:
    for path in (*OWN_DOCS, REPO / "Dockerfile", COMPOSE):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"--set[ =]\\?\"?([a-z_0-9]+)=([^\s\"'`\\\]]*)", text):
            yield path, m.group(1), m.group(2)
        for m in re.finditer(r'"--set",\s*"([a-z_0-9]+)=([^"]*)"', text):
            yield path, m.group(1), m.group(2)


def test_every_set_option_in_the_docs_exists_and_takes_that_value() -> None:
    options = mitmproxy_options()
    seen = list(set_options_in_docs())
    assert len(seen) > 20
    for path, name, value in seen:
        assert name in options, f"{path.name}: --set {name}=… is not an option"
        opt = options[name]
        if "$" in value or "<" in value or not value:
            continue
        if opt.choices:
            assert value in opt.choices, f"{path.name}: {name}={value} is not one of {opt.choices}"
        elif opt.typespec in (int, Optional[int]):  # noqa: UP045
            assert value.isdigit(), f"{path.name}: {name}={value} is not an integer"
        elif opt.typespec is bool:
            assert value in ("true", "false"), f"{path.name}: {name}={value} is not true/false"


def test_htpasswd_example_is_a_format_mitmproxy_reads_and_md5_is_not() -> None:
    text = ADMIN.read_text(encoding="utf-8")
    lines = [line for block in code_blocks(ADMIN, "text") for line in block.splitlines() if line.startswith("alice:")]
    assert lines, "the guide shows an htpasswd line for alice"
    for line in lines:
        assert HtpasswdFile(line).check_password("alice", "secret"), line
    assert "$apr1$" in text, "the guide warns about htpasswd's default MD5 format"
    with pytest.raises(ValueError, match="Unsupported"):
        HtpasswdFile("bob:$apr1$R3a1s0lt$0a0a0a0a0a0a0a0a0a0a01")
    assert "htpasswd -B" in text


def test_htpasswd_python_one_liner_writes_a_working_entry() -> None:
    commands = [
        line.strip()
        for block in code_blocks(ADMIN, "bash")
        for line in block.splitlines()
        if line.strip().startswith("python3 -c") and "bcrypt" in line
    ]
    assert commands, "the guide gives a Python way to add a user when htpasswd is not installed"
    for command in commands:
        command = command.split(">>")[0].strip().replace("python3", sys.executable, 1)
        result = subprocess.run(
            command, shell=True, input="secret\n", capture_output=True, text=True, start_new_session=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        entry = result.stdout.strip().splitlines()[-1]
        assert HtpasswdFile(entry).check_password("alice", "secret"), entry


def test_compose_override_example_merges_with_the_stack(tmp_path: Path) -> None:
    override = [b for b in code_blocks(ADMIN, "yaml") if b.startswith("# deploy/compose.override.yaml")]
    assert len(override) == 1, "the guide shows one deploy/compose.override.yaml"
    path = tmp_path / "compose.override.yaml"
    path.write_text(override[0], encoding="utf-8")
    model = compose_model(files=(COMPOSE, path))
    proxy = model["services"][PROXY_SERVICE]
    command = " ".join(proxy["command"])
    assert "proxyauth=@/run/secrets/htpasswd" in command
    assert {s["source"] for s in proxy.get("secrets", [])} >= {"htpasswd"}
    secret_files = {name: Path(s["file"]) for name, s in model["secrets"].items()}
    assert secret_files["htpasswd"].parent == COMPOSE.parent, "secret files are next to compose.yaml"
    for m in re.finditer(r"@(/run/secrets/[\w.-]+)", command):
        assert Path(m.group(1)).name in {s["source"] for s in proxy["secrets"]}, m.group(1)


def test_prometheus_basic_auth_example_passes_promtool(tmp_path: Path) -> None:
    job = yaml_block(ADMIN, "basic_auth")
    assert isinstance(job, list) and len(job) == 1
    prometheus = service(compose_model(), "prometheus")
    root = materialize(prometheus, tmp_path)
    config_path = root / "etc/prometheus/prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    names = [j["job_name"] for j in config["scrape_configs"]]
    assert job[0]["job_name"] in names, "the example replaces the stack's proxy job"
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != job[0]["job_name"]] + job
    password_file = job[0]["basic_auth"]["password_file"]
    secret = root / password_file.lstrip("/")
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("secret\n")
    job[0]["basic_auth"]["password_file"] = str(secret)
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_runs_the_console_script_as_an_unprivileged_user() -> None:
    units = [b for b in code_blocks(ADMIN, "ini") if "[Service]" in b]
    assert len(units) == 1
    unit = units[0]
    exec_start = re.search(r"^ExecStart=(.*(?:\\\n.*)*)", unit, re.M)
    assert exec_start
    argv = exec_start.group(1).replace("\\\n", " ").split()
    assert argv[0].endswith("/bin/copilot-proxy-insight")
    assert re.search(r"^User=(?!root)\w+", unit, re.M)
    assert re.search(r"^KillSignal=SIGTERM|^Restart=", unit, re.M)


# -- tests: reference ---------------------------------------------------------------------------------------


def test_reference_lists_every_metric_with_its_type_labels_and_help() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    rows = {code_name(r[0]): r for r in table(text, "metric")}
    expected = {m.exposed_name: m for m in md.METRICS}
    assert set(rows) == set(expected), (
        f"regenerate with `python -m tests.test_docs metrics`: {set(rows) ^ set(expected)}"
    )
    for name, m in expected.items():
        _, type_cell, labels_cell, help_cell = rows[name]
        assert type_cell == m.type.value, name
        assert labels_cell == from_cell(labels_text(m)), name
        assert help_cell == " ".join(m.help.split()), name
        if m.type is md.MetricType.HISTOGRAM:
            assert f"`{m.name}` buckets (seconds): {buckets_text(m)}" in text, f"{name}: document the buckets"


def test_reference_names_every_kind_and_skip_reason() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    for value in [*(k.value for k in Kind), *(s.value for s in Skip)]:
        assert f"`{value}`" in text, f"docs/reference.md does not mention {value}"


def test_reference_field_table_matches_the_log_line() -> None:
    rows = {code_name(r[0]): r for r in table(REFERENCE.read_text(encoding="utf-8"), "field")}
    types = log_field_types()
    assert set(rows) == set(types), f"fields differ: {set(rows) ^ set(types)}"
    for name, json_t in types.items():
        assert rows[name][1] == json_t, f"{name}: type {rows[name][1]!r}, the code says {json_t!r}"
    assert set(real_log_line()) <= set(types)


def test_reference_log_line_examples_have_the_real_keys() -> None:
    counted = json_block(REFERENCE, '"event": "copilot.request"')
    assert set(counted) == set(real_log_line())
    skipped = json_block(REFERENCE, '"event": "copilot.skipped"')
    assert set(skipped) == set(real_log_line(counted=False, skip_reason="agent_step"))
    assert skipped["counted"] is False and skipped["skip_reason"] in {s.value for s in Skip}


def test_reference_summary_example_has_the_original_schema() -> None:
    example = json_block(REFERENCE, '"total_chat_turns"')
    summary = DaySummary(DAY)
    summary.add("alice", "chat_panel", "vscode-1.111.0", "unknown")
    summary.add("alice", "completion", "vscode-1.111.0", "python")
    real = summary.to_doc()
    assert list(example) == list(real), "top-level keys, in the original's order"
    for user in example["usage"].values():
        assert list(user) == list(real["usage"]["alice"])
    totals = sum(u["chat_turns"] for u in example["usage"].values())
    assert example["total_chat_turns"] == totals
    assert example["total_completions_count"] == sum(u["completions_count"] for u in example["usage"].values())
    for user in example["usage"].values():
        assert user["chat_turns"] == sum(user["chat"].values())
        assert user["completions_count"] == sum(n for langs in user["completions"].values() for n in langs.values())


def test_reference_recording_example_has_the_keys_the_recorder_writes(tmp_path: Path) -> None:
    example = json_block(REFERENCE, '"proxy-time-consumed"')
    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    recorder = RecorderSink(tmp_path, writer, record_telemetry=False)
    recording = Recording(
        url="https://proxy.business.githubcopilot.com/v1/engines/gpt-41-copilot/completions",
        method="POST",
        request_headers=[("Authorization", "Bearer tid=0123456789abcdef"), ("Editor-Version", "vscode/1.111.0")],
        request_content={"prompt": "def add(x, y):", "extra": {"language": "python"}},
        response_headers=[("content-type", "text/event-stream")],
        response_content=[{"choices": [{"text": "\n    return x + y"}]}],
    )
    recorder.handle(factories.emitted(factories.event(), recording))
    assert writer.flush()
    files = list((tmp_path / "usage").rglob("*.json"))
    assert len(files) == 1
    assert files[0].relative_to(tmp_path).parts[:3] == ("usage", "alice", "completion")
    real = json.loads(files[0].read_text())
    assert list(example) == list(real)
    for key in ("request", "response"):
        assert list(example[key]) == list(real[key]), key
    assert "proxy-authorization" not in json.dumps(example).lower()
    assert real["request"]["headers"]["authorization"] == "[REDACTED]"
    assert example["request"]["headers"]["authorization"] == "[REDACTED]"


# -- tests: logs ---------------------------------------------------------------------------------------------


ES_TYPES = {
    "string": {"keyword", "text", "match_only_text", "wildcard"},
    "integer": {"long", "integer"},
    "number": {"double", "float", "scaled_float"},
    "boolean": {"boolean"},
    "array of strings": {"keyword"},
    "object": {"flattened", "object"},
}


def test_logs_field_mapping_covers_every_field_with_a_fitting_type() -> None:
    text = LOGS.read_text(encoding="utf-8")
    rows = {code_name(r[0]): r for r in table(text, "JSON field")}
    types = log_field_types()
    assert set(rows) == set(types), f"fields differ: {set(rows) ^ set(types)}"
    template = kibana_request(LOGS, "PUT _index_template/copilot-events")
    properties = template["template"]["mappings"]["properties"]
    assert set(properties) == {"@timestamp", "copilot"}
    mapped = properties["copilot"]["properties"]
    for name, json_t in types.items():
        es_field, es_type = code_name(rows[name][1]), rows[name][2]
        assert es_field == f"copilot.{name}", name
        assert mapped[name]["type"] == es_type, f"{name}: table says {es_type}, template {mapped[name]['type']}"
        allowed = {"date"} if name == "timestamp" else ES_TYPES[json_t.removesuffix(" or null")]
        assert es_type in allowed, f"{name}: {es_type} cannot hold a JSON {json_t}"


def test_filebeat_and_pipeline_ingest_the_event_files() -> None:
    filebeat = yaml_block(LOGS, "filebeat.inputs")
    (inp,) = filebeat["filebeat.inputs"]
    assert inp["type"] == "filestream"
    data_dir = Path("/var/lib/copilot-proxy-insight")
    assert any(glob_match(p, str(log_path(data_dir, DAY))) for p in inp["paths"])
    (parser,) = inp["parsers"]
    assert parser["ndjson"]["target"] == "copilot"
    pipeline_name = filebeat["output.elasticsearch"]["pipeline"]
    pipeline = kibana_request(LOGS, f"PUT _ingest/pipeline/{pipeline_name}")
    dates = [p["date"] for p in pipeline["processors"] if "date" in p]
    assert dates and dates[0]["field"] == "copilot.timestamp" and dates[0]["target_field"] == "@timestamp"
    template = kibana_request(LOGS, "PUT _index_template/copilot-events")
    index = filebeat["output.elasticsearch"]["index"]
    assert any(glob_match(p, index.split("%")[0] + "2026.11.24") for p in template["index_patterns"])

    # A real line, as Filebeat's ndjson parser nests it, fits the mapping.
    mapped = template["template"]["mappings"]["properties"]["copilot"]["properties"]
    line = real_log_line(prompt="def add(x, y):", completion="return x + y", tool_calls=("read_file",))
    for key, value in line.items():
        es_type = mapped[key]["type"]
        if value is None:
            continue
        if es_type == "boolean":
            assert isinstance(value, bool), key
        elif es_type in ("long", "integer"):
            assert isinstance(value, int) and not isinstance(value, bool), key
        elif es_type in ("double", "float"):
            assert isinstance(value, int | float), key
        elif es_type == "date":
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", value), key
        else:
            assert isinstance(value, str | list), key


def test_promtail_and_logstash_examples_read_the_event_files() -> None:
    promtail = yaml_block(LOGS, "scrape_configs")
    (job,) = promtail["scrape_configs"]
    labels = job["static_configs"][0]["labels"]
    assert labels["job"] == "copilot-proxy-insight"
    assert glob_match(labels["__path__"], str(log_path(Path("/var/lib/copilot-proxy-insight"), DAY)))
    logstash = [b for b in code_blocks(LOGS) if b.lstrip().startswith("input {")]
    assert len(logstash) == 1
    path = re.search(r'path\s*=>\s*"([^"]+)"', logstash[0])
    assert path and glob_match(path.group(1), str(log_path(Path("/var/lib/copilot-proxy-insight"), DAY)))
    assert 'target => "copilot"' in logstash[0] and "[copilot][timestamp]" in logstash[0]


# -- tests: clients ------------------------------------------------------------------------------------------


def test_clients_guide_covers_each_editor() -> None:
    text = CLIENTS.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    for editor in ("VS Code", "JetBrains", "Vim", "Neovim", "Visual Studio", "Xcode", "Copilot CLI"):
        assert any(editor in h for h in headings), f"no section for {editor}"
    for setting in ("http.proxy", "http.proxyStrictSSL", "http.proxyAuthorization", "g:copilot_proxy"):
        assert setting in text
    for variable in ("NODE_EXTRA_CA_CERTS", "HTTPS_PROXY", "COPILOT_USE_DEFAULTPROXY"):
        assert variable in text
    assert not re.search(r"(proxy|PROXY)[\"' =:]+https://", text), "Copilot does not support https:// proxy URLs"


def test_clients_guide_jsonc_settings_parse() -> None:
    blocks = code_blocks(CLIENTS, "jsonc")
    assert blocks
    for block in blocks:
        body = re.sub(r"^\s*//.*$", "", block, flags=re.M)
        settings = json.loads("{" + body.strip().rstrip(",") + "}")
        assert settings["http.proxy"].startswith("http://")
        assert settings.get("http.proxyStrictSSL", True) is True, "never turn certificate checks off"


def test_clients_check_command_hits_a_copilot_endpoint_that_is_counted_as_a_response() -> None:
    text = CLIENTS.read_text(encoding="utf-8")
    m = re.search(r"curl [^\n]*--proxy [^\n]*(https://[\w.-]+)(/[\w/_-]*)", text)
    assert m, "the guide gives a curl check through the proxy"
    host, path = m.group(1).removeprefix("https://"), m.group(2)
    role = HostTable().role(host)
    assert role is not None, f"{host} is not a Copilot host: the check would be tunnelled, not seen"
    kind = route(role, "GET", path).kind
    assert f'copilot_responses_total{{kind="{kind.value}"' in text


# -- tests: every doc ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", OWN_DOCS, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    links = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: broken link {link}"
        if anchor and path.suffix == ".md":
            anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)}
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor} in {path.name}"


def test_docs_name_the_pinned_stack_and_the_real_volumes() -> None:
    text = ADMIN.read_text(encoding="utf-8")
    stack = compose_model()
    assert "docker compose -f deploy/compose.yaml up -d --build" in text
    for name in stack["services"]:
        assert f"`{name}`" in text, f"the admin guide does not mention service {name}"
    for volume in stack["volumes"]:
        assert volume in text, f"the admin guide does not mention volume {volume}"
    proxy = service(stack, PROXY_SERVICE)
    for mount in proxy["volumes"]:
        assert mount["target"] in text


def test_commands_the_docs_name_exist() -> None:
    """Every `copilot-proxy-insight <subcommand>` and `./dev <command>` in the README and the admin guide."""
    from exporter.cli import SUBCOMMANDS

    dev_commands = set(re.findall(r"^  ([a-z| -]+)\)$", (REPO / "dev").read_text(), re.M))
    dev_known = {c.strip() for group in dev_commands for c in group.split("|")}
    assert {"run", "test", "setup", "exec", "options", "rebuild", "export-config"} <= dev_known
    for path in (REPO / "README.md", ADMIN):
        text = path.read_text(encoding="utf-8")
        # As commands are written: in inline code or at the start of a line in a code block.
        subs = set(re.findall(r"(?:^|`)copilot-proxy-insight ([a-z][a-z-]*)\b", text, re.M))
        assert subs, path.name
        for sub in subs:
            assert sub in SUBCOMMANDS, f"{path.name}: copilot-proxy-insight {sub} is no subcommand"
        for command in re.findall(r"\./dev ([a-z][a-z-]*)", text):
            assert command in dev_known, f"{path.name}: ./dev {command} is not a ./dev command"


def test_the_readme_quick_start_says_it_is_loopback_only() -> None:
    from exporter.cli import DEFAULTS

    text = (REPO / "README.md").read_text(encoding="utf-8")
    quick = text[text.index("## Quick start") : text.index("## What it counts")]
    assert DEFAULTS["listen_host"] == "127.0.0.1"
    assert "listens on 127.0.0.1 only" in quick and "OPEN PROXY" in quick
    assert "--set listen_host=0.0.0.0" in quick and "proxyauth=" in quick


def _main(argv: list[str]) -> int:
    what = argv[0] if argv else "options"
    if what == "options":
        print(options_table())
    elif what == "mitmproxy":
        options = mitmproxy_options()
        for name in argv[1:]:
            opt = options[name]
            print(f"| `{name}` | {type_text(opt)} | {default_text(opt.default)} | |")
    elif what == "metrics":
        print(metrics_table())
        for m in md.METRICS:
            if m.type is md.MetricType.HISTOGRAM:
                print(f"\n`{m.name}` buckets (seconds): {buckets_text(m)}")
    else:
        print("usage: python -m tests.test_docs options|mitmproxy NAME...|metrics", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
