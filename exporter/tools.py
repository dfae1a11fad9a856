"""What agents do: tool calls classified as built-in or MCP (with their server), and the MCP servers behind URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from exporter import jsoncodec
from exporter.labels import OTHER
from exporter.values import quick_init

BUILTIN = "builtin"
MCP = "mcp"
UNKNOWN_SOURCE = "unknown"
SOURCES = (BUILTIN, MCP, UNKNOWN_SOURCE)

# Built-in tools of the Copilot clients (VS Code Copilot Chat, the Copilot CLI, JetBrains/Xcode/Eclipse via
# the language server, Copilot coding agent). The tool label keeps these names; every other name is `other`,
# so a model that invents tool names, or thousands of MCP tools, cannot grow the label.
BUILTIN_TOOLS: frozenset[str] = frozenset(
    """
    read_file create_file create_directory replace_string_in_file multi_replace_string_in_file
    insert_edit_into_file apply_patch edit_file edit_notebook_file run_notebook_cell read_notebook_cell_output
    copilot_getNotebookSummary new_jupyter_notebook configure_notebook run_in_terminal get_terminal_output
    terminal_last_command terminal_selection create_and_run_task run_task get_task_output file_search grep_search
    semantic_search list_dir list_code_usages search_workspace_symbols get_errors get_changed_files test_failure
    run_tests runTests test_search fetch_webpage open_simple_browser github_repo get_vscode_api
    run_vscode_command install_extension vscode_searchExtensions_internal create_new_workspace
    get_project_setup_info create_new_jupyter_notebook manage_todo_list think get_search_view_results
    get_python_environment_details configure_python_environment install_python_packages
    get_python_executable_details runSubagent search_subagent
    bash write_bash read_bash stop_bash list_bash powershell write_powershell read_powershell stop_powershell
    view create edit str_replace str_replace_editor str_replace_based_edit_tool glob grep web_fetch web_search
    report_intent update_todo task fetch_copilot_cli_documentation think_tool report_progress
    read_agent list_agents
    insert_edit_into_file_jb run_in_terminal_jb
    """.split()
)

# Tools of the GitHub MCP server (the one Copilot itself serves at api.githubcopilot.com/mcp/): kept as
# tool labels when they come from an MCP server.
GITHUB_MCP_TOOLS: frozenset[str] = frozenset(
    """
    get_me get_issue list_issues create_issue update_issue add_issue_comment search_issues get_issue_comments
    get_pull_request list_pull_requests create_pull_request update_pull_request merge_pull_request
    search_pull_requests get_pull_request_files get_pull_request_diff get_pull_request_status
    get_pull_request_comments get_pull_request_reviews create_pull_request_review request_copilot_review
    get_file_contents create_or_update_file delete_file push_files create_branch list_branches list_commits
    get_commit list_tags get_tag search_code search_repositories search_users create_repository fork_repository
    list_workflows list_workflow_runs get_workflow_run get_job_logs run_workflow list_notifications
    get_code_scanning_alert list_code_scanning_alerts get_secret_scanning_alert list_secret_scanning_alerts
    get_dependabot_alert list_dependabot_alerts assign_copilot_to_issue list_releases get_latest_release
    """.split()
)

# Well-known remote MCP servers by host, as server label values (other hosts are capped first-come).
KNOWN_MCP_HOSTS: dict[str, str] = {
    "api.githubcopilot.com": "github",
    "mcp.atlassian.com": "atlassian",
    "mcp.notion.com": "notion",
    "mcp.linear.app": "linear",
    "mcp.sentry.dev": "sentry",
    "mcp.stripe.com": "stripe",
    "mcp.context7.com": "context7",
    "mcp.deepwiki.com": "deepwiki",
    "mcp.figma.com": "figma",
    "mcp.asana.com": "asana",
    "mcp.paypal.com": "paypal",
    "mcp.squareup.com": "square",
    "mcp.webflow.com": "webflow",
    "mcp.wix.com": "wix",
    "mcp.zapier.com": "zapier",
    "mcp.vercel.com": "vercel",
    "mcp.supabase.com": "supabase",
    "mcp.neon.tech": "neon",
    "mcp.huggingface.co": "huggingface",
    "mcp.cloudflare.com": "cloudflare",
    "mcp.gitlab.com": "gitlab",
    "mcp.azure.com": "azure",
}

_SERVER_CHARS = re.compile(r"[^a-z0-9_.-]+")
_MCP_DOUBLE = re.compile(r"^mcp__(?P<server>[^_][^\s]*?)__(?P<tool>.+)$")  # mcp__server__tool (Claude style)
_MCP_SINGLE = re.compile(r"^mcp_(?P<server>[A-Za-z0-9-]+)_(?P<tool>.+)$")  # mcp_server_tool (VS Code)
_MCP_CLI = re.compile(r"^(?P<server>[A-Za-z0-9_]+)-mcp-server-(?P<tool>.+)$")  # github-mcp-server-get_issue (CLI)
_MCP_PATH = re.compile(r"(?:^|/)mcp(?:/|$)")


def server_label(raw: str | None) -> str:
    """A server name as a label value: lower-cased, punctuation folded, 64 characters at most."""
    if not raw:
        return ""
    cleaned = _SERVER_CHARS.sub("-", raw.strip().lower()).strip("-")
    return cleaned[:64]


@quick_init
@dataclass(frozen=True, slots=True)
class ToolUse:
    """One tool call a model asked for: its label value, source (builtin, mcp, unknown) and MCP server."""

    tool: str
    source: str
    server: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class RequestTools:
    """What a request's tool list says about MCP: the servers it offers the model (Responses `{"type": "mcp"}`
    tools, Anthropic `mcp_servers` and `mcp_toolset` tools)."""

    servers: tuple[str, ...] = ()


NO_TOOLS = RequestTools()


def classify_tool(name: str, server: str = "", offered: RequestTools = NO_TOOLS) -> ToolUse:
    """The label, source and server of a tool name. `server` is what the answer itself said (Responses
    `mcp_call.server_label`, Anthropic `mcp_tool_use.server_name`); else the name's MCP prefix; else the
    request's tool list when it offers exactly one MCP server and the name is not a built-in tool."""
    server = server_label(server)
    tool = name
    for pattern in (_MCP_DOUBLE, _MCP_SINGLE, _MCP_CLI):
        m = pattern.match(name)
        if m is not None:
            server = server or server_label(m.group("server"))
            tool = m.group("tool")
            break
    if server:
        return ToolUse(tool if tool in GITHUB_MCP_TOOLS else OTHER, MCP, server)
    if name in BUILTIN_TOOLS:
        return ToolUse(name, BUILTIN)
    if len(offered.servers) == 1:
        return ToolUse(name if name in GITHUB_MCP_TOOLS else OTHER, MCP, offered.servers[0])
    return ToolUse(OTHER, UNKNOWN_SOURCE)


def _tool_list_servers(tools: object) -> list[str]:
    """Responses `{"type": "mcp", "server_label": …}` tools and Anthropic `{"type": "mcp_toolset",
    "mcp_server_name": …}` tools."""
    servers: list[str] = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        name = tool.get("server_label") if tool.get("type") == "mcp" else tool.get("mcp_server_name")
        if isinstance(name, str):
            servers.append(server_label(name))
    return servers


def _anthropic_servers(value: object) -> list[str]:
    out = []
    for server in value if isinstance(value, list) else []:
        if isinstance(server, dict) and isinstance(server.get("name"), str):
            out.append(server_label(server["name"]))
    return out


def request_tools(body: bytes | None, parsed: Any = None) -> RequestTools:
    """The MCP facts of a request body's tool list; a body that never says "mcp" costs one substring scan.
    `parsed`: the body already parsed (bodies.read_request), else it is parsed here."""
    if not body or b"mcp" not in body:
        return NO_TOOLS
    try:
        obj = jsoncodec.loads(body) if parsed is None else parsed
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NO_TOOLS
    if not isinstance(obj, dict):
        return NO_TOOLS
    servers = _tool_list_servers(obj.get("tools")) + _anthropic_servers(obj.get("mcp_servers"))
    return RequestTools(tuple(dict.fromkeys(s for s in servers if s)))


def mcp_server(host: str, path: str, copilot: bool) -> str | None:
    """The MCP server a request talks to: GitHub's for a Copilot host's /mcp/ paths; for another host, a
    known MCP host's name, or the host itself when the host or path says MCP; None when it is not MCP."""
    host = host.lower().rstrip(".")
    path = path.split("?", 1)[0]
    if copilot:
        return "github" if _MCP_PATH.search(path) else None
    known = KNOWN_MCP_HOSTS.get(host)
    if known is not None:
        return known
    labels = host.split(".")
    if "mcp" in labels or any(part.endswith("-mcp") or part.startswith("mcp-") for part in labels):
        return server_label(host)
    if _MCP_PATH.search(path):
        return server_label(host)
    return None
