"""Who sent a request: the proxy user of the client connection, and the editor/plugin from the headers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.values import quick_init

ANONYMOUS = "anonymous"
UNKNOWN = "unknown"

_MAX_VALUE = 128
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._+\-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Editor-Plugin-Version plugin name -> editor label, when Editor-Version is missing (LS resolveEditorIdentity).
_PLUGIN_EDITORS: dict[str, str] = {
    "copilot-eclipse": "eclipse",
    "copilot4eclipse": "eclipse",
    "copilot-xcode": "xcode",
    "copilot for xcode": "xcode",
    "copilot-vs": "visualstudio",
    "copilot.vim": "vim",
    "copilot.lua": "neovim",
    "coc-github-copilot": "vim",
    "copilot-lsp-client-neovim": "neovim",
    "sidekick.nvim": "neovim",
    "copilotchat.nvim": "neovim",
    "helix-copilot": "helix",
    "copilot-sublime": "sublime",
    "zed-copilot": "zed",
    "copilot-intellij": "jetbrains",
    "copilot-chat": "vscode",
    "copilot": "vscode",
}
# User-Agent product -> editor label, the last fallback. The Copilot CLI sends `copilot/<v> (...)` on its model
# calls, `copilot-cli/<v>` on its MCP calls and `GitHubCopilotCLI` on its update check (copilot-cli.md).
_UA_EDITORS: tuple[tuple[str, str], ...] = (
    ("githubcopilotchat/", "vscode"),
    ("copilot/", "cli"),
    ("copilot-cli/", "cli"),
    ("githubcopilotcli", "cli"),
)
CLI_INTEGRATION_ID = "copilot-developer-cli"


def clean(value: str | None, limit: int = _MAX_VALUE) -> str | None:
    """A header-derived value safe to put in logs and files: no control characters, bounded length."""
    if value is None:
        return None
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
    value = _CONTROL.sub("", value).strip()
    return value[:limit] or None


def user_from_proxy_authorization(value: str | None) -> str | None:
    """The user named by a Proxy-Authorization value (Basic or the original tool's raw `user[:pass]`)."""
    if not value:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return None
        user = decoded.partition(":")[0]
    elif rest:
        # Negotiate/Kerberos/Bearer: no user name we can read without the secret's semantics.
        return None
    else:
        user = value.partition(":")[0]
    return clean(user)


def proxy_user(authenticated_user: str | None, proxy_authorization: str | None) -> str:
    """The user of a flow: proxyauth's verified user, else a Proxy-Authorization sent anyway, else anonymous."""
    return clean(authenticated_user) or user_from_proxy_authorization(proxy_authorization) or ANONYMOUS


def pseudonym(user: str, key: str) -> str:
    """A stable pseudonymous user id (keyed HMAC-SHA256): the same user always maps to the same id,
    and without the key nobody can tell who it is."""
    digest = hmac.new(key.encode(), user.encode(), hashlib.sha256).hexdigest()
    return f"u-{digest[:16]}"


@quick_init
@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The editor and plugin a request came from. `editor` is the lower-cased label value."""

    editor: str
    editor_name: str | None
    editor_version: str | None
    plugin: str | None
    plugin_version: str | None
    header_editor_version: str | None  # the raw Editor-Version value, when sent

    @property
    def summary_key(self) -> str:
        """The daily summary's editor key: Editor-Version with `/` replaced by `-` (vscode-1.96.2)."""
        if self.header_editor_version:
            return summary_key(self.header_editor_version)
        if self.editor_version:
            return summary_key(f"{self.editor}/{self.editor_version}")
        return summary_key(self.editor)


UNKNOWN_CLIENT = ClientIdentity(UNKNOWN, None, None, None, None, None)


def summary_key(editor_version: str) -> str:
    key = _SAFE_KEY.sub("_", editor_version.replace("/", "-"))[:_MAX_VALUE]
    return key or UNKNOWN


def _split(value: str | None) -> tuple[str | None, str | None]:
    value = clean(value)
    if not value:
        return None, None
    name, sep, version = value.partition("/")
    return (clean(name), clean(version) if sep else None)


def editor_label(name: str) -> str:
    """`Editor-Version` name part, lower-cased: vscode, jetbrains-iu, neovim, visualstudio, xcode…"""
    return name.strip().lower().replace(" ", "")


def identify(headers: Mapping[str, str]) -> ClientIdentity | None:
    """Editor and plugin from request headers; None when the request carries nothing that identifies it."""
    raw_editor = clean(headers.get("editor-version"))
    editor_name, editor_version = _split(raw_editor)
    plugin, plugin_version = _split(headers.get("editor-plugin-version"))
    if editor_name:
        label = "cli" if _is_cli(editor_name, headers) else editor_label(editor_name)
        return ClientIdentity(label, editor_name, editor_version, plugin, plugin_version, raw_editor)
    if plugin:
        editor = _PLUGIN_EDITORS.get(plugin.lower())
        if editor:
            return ClientIdentity(editor, None, None, plugin, plugin_version, None)
    agent = (headers.get("user-agent") or "").strip()
    lowered = agent.lower()
    for prefix, editor in _UA_EDITORS:
        if lowered.startswith(prefix):
            version = clean(agent[len(prefix) :].split(" ", 1)[0])
            if editor == "cli":
                return ClientIdentity("cli", "cli", version, plugin, plugin_version, None)
            # The VS Code Chat extension's version names the plugin, not the editor.
            return ClientIdentity(editor, None, None, plugin or "copilot-chat", plugin_version or version, None)
    if headers.get("copilot-integration-id", "").strip().lower() == CLI_INTEGRATION_ID:
        return ClientIdentity("cli", "cli", None, plugin, plugin_version, None)
    if plugin:
        return ClientIdentity(UNKNOWN, None, None, plugin, plugin_version, None)
    return None


def _is_cli(editor_name: str, headers: Mapping[str, str]) -> bool:
    """`Editor-Version: copilot/<v>` is the Copilot CLI when its User-Agent or integration id says so too.

    The name alone is not enough: `copilot/<v>` was also the plugin name of VS Code's old completions
    extension, and a client that only borrows the name should not be counted as the CLI."""
    if editor_name.lower() != "copilot":
        return False
    if headers.get("copilot-integration-id", "").strip().lower() == CLI_INTEGRATION_ID:
        return True
    agent = (headers.get("user-agent") or "").strip().lower()
    return agent.startswith("copilot/") or agent.endswith("client/github/cli")
