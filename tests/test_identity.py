"""Editor/plugin identity from headers and the proxy user from Proxy-Authorization."""

from __future__ import annotations

import base64

import pytest

from exporter.identity import identify, proxy_user, summary_key, user_from_proxy_authorization
from tests import samples


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


IDENTITIES = [
    # headers -> (editor label, editor version, plugin, plugin version, summary key)
    (
        {"Editor-Version": "vscode/1.111.0", "Editor-Plugin-Version": "copilot-chat/0.42.0"},
        ("vscode", "1.111.0", "copilot-chat", "0.42.0", "vscode-1.111.0"),
    ),
    (
        {"editor-version": "JetBrains-IU/243.22562.218", "editor-plugin-version": "copilot-intellij/1.5.60-243"},
        ("jetbrains-iu", "243.22562.218", "copilot-intellij", "1.5.60-243", "JetBrains-IU-243.22562.218"),
    ),
    (
        {"Editor-Version": "Neovim/0.12.0-dev-1234+g5678", "Editor-Plugin-Version": "copilot.vim/1.50.0"},
        ("neovim", "0.12.0-dev-1234+g5678", "copilot.vim", "1.50.0", "Neovim-0.12.0-dev-1234+g5678"),
    ),
    ({"Editor-Version": "Xcode/16.4"}, ("xcode", "16.4", None, None, "Xcode-16.4")),
    ({"Editor-Version": "VisualStudio/17.14.28"}, ("visualstudio", "17.14.28", None, None, "VisualStudio-17.14.28")),
    ({"Editor-Plugin-Version": "copilot-xcode/0.40.0"}, ("xcode", None, "copilot-xcode", "0.40.0", "xcode")),
    ({"User-Agent": "copilot/0.0.356 (linux v22.12.0)"}, ("cli", "0.0.356", None, None, "cli-0.0.356")),
    ({"User-Agent": "GitHubCopilotChat/0.42.0"}, ("vscode", None, "copilot-chat", "0.42.0", "vscode")),
    ({"Copilot-Integration-Id": "copilot-developer-cli"}, ("cli", None, None, None, "cli")),
    # The Copilot CLI 1.0.102: Editor-Version copilot/<v> with its User-Agent or its integration id.
    (
        {"Editor-Version": "copilot/1.0.102", "User-Agent": samples.CLI_USER_AGENT},
        ("cli", "1.0.102", None, None, "copilot-1.0.102"),
    ),
    (
        {"Editor-Version": "copilot/1.0.102", "Copilot-Integration-Id": "copilot-developer-cli"},
        ("cli", "1.0.102", None, None, "copilot-1.0.102"),
    ),
    (
        {"Editor-Version": "copilot/1.0.102", "User-Agent": "node-fetch/3 client/github/cli"},
        ("cli", "1.0.102", None, None, "copilot-1.0.102"),
    ),
    # The name alone is not the CLI (the old VS Code completions plugin was called copilot too).
    (
        {"Editor-Version": "copilot/1.0.102", "User-Agent": "curl/8"},
        ("copilot", "1.0.102", None, None, "copilot-1.0.102"),
    ),
    ({"User-Agent": "copilot-cli/1.0.102"}, ("cli", "1.0.102", None, None, "cli-1.0.102")),  # its MCP calls
    ({"User-Agent": "GitHubCopilotCLI"}, ("cli", None, None, None, "cli")),  # its update check
    (
        {"Editor-Version": "weird/../../etc\x00/passwd"},
        ("weird", "../../etc/passwd", None, None, "weird-..-..-etc-passwd"),
    ),
]


@pytest.mark.parametrize(("headers", "want"), IDENTITIES)
def test_identify(headers: dict[str, str], want: tuple[object, ...]) -> None:
    from mitmproxy.http import Headers

    ident = identify(Headers(**{k.replace("-", "_"): v for k, v in headers.items()}))
    assert ident is not None
    assert (ident.editor, ident.editor_version, ident.plugin, ident.plugin_version, ident.summary_key) == want


def test_nothing_identifies_a_bare_request() -> None:
    assert identify({"content-type": "application/json", "user-agent": "curl/8"}) is None


@pytest.mark.parametrize(
    ("value", "user"),
    [
        (_basic("alice", "s3cr3t"), "alice"),
        (_basic("bob", "pa:ss:word"), "bob"),
        ("basic " + base64.b64encode(b"carol:x").decode(), "carol"),
        ("satomic:123", "satomic"),  # the original tool's raw form
        ("satomic", "satomic"),
        ("Basic !!!notbase64", None),
        ("Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXe", None),
        ("", None),
        (None, None),
        (_basic("ev\x00il\nname", "x"), "evilname"),
    ],
)
def test_user_from_proxy_authorization(value: str | None, user: str | None) -> None:
    assert user_from_proxy_authorization(value) == user


def test_proxy_user_prefers_the_authenticated_user() -> None:
    assert proxy_user("alice", _basic("mallory", "x")) == "alice"
    assert proxy_user(None, _basic("bob", "x")) == "bob"
    assert proxy_user(None, None) == "anonymous"


def test_summary_key_is_bounded_and_safe() -> None:
    assert summary_key("vscode/1.96.2") == "vscode-1.96.2"
    assert len(summary_key("x" * 1000)) == 128
    assert summary_key("") == "unknown"


@pytest.mark.parametrize("ex", [*samples.CLI, *samples.CLI_WEBSOCKET], ids=lambda e: e.name)
def test_every_cli_model_call_is_the_cli(ex: samples.Exchange) -> None:
    ident = identify(dict((k.lower(), v) for k, v in ex.request_headers))
    assert ident is not None
    assert (ident.editor, ident.editor_version, ident.header_editor_version) == (
        "cli",
        "1.0.102",
        ex.expected["editor_version"],
    )
    assert ident.summary_key == "copilot-1.0.102"  # the original daily summary's key stays the raw Editor-Version
