"""Bounded label values: known sets and per-label caps, folding the rest into `other` and counting it."""

from __future__ import annotations

import re
from collections.abc import Callable

OTHER = "other"
UNKNOWN = "unknown"

_JETBRAINS = re.compile(r"^jetbrains-[a-z]{2,4}$")
_PLAUSIBLE_LANGUAGE = re.compile(r"^[a-z][a-z0-9+#._-]{0,31}$")
KNOWN_EDITORS: frozenset[str] = frozenset(
    {
        "vscode",
        "vscode-insiders",
        "code-oss",
        "visualstudio",
        "xcode",
        "eclipse",
        "neovim",
        "vim",
        "zed",
        "emacs",
        "helix",
        "sublime",
        "jetbrains",
        "cli",
        UNKNOWN,
    }
)

# VS Code language identifiers (plus common LSP / Vim filetype spellings) for completions' extra.language.
KNOWN_LANGUAGES: frozenset[str] = frozenset(
    """
    abap bat bibtex blade c clojure coffeescript cpp csharp css cuda-cpp dart diff dockerfile elixir erb
    erlang fsharp git-commit git-rebase go groovy handlebars haml haskell hcl html ini jade java
    javascript javascriptreact json jsonc julia kotlin latex less lua makefile markdown matlab nix
    objective-c objective-cpp ocaml pascal perl perl6 php plaintext powershell prisma properties proto
    python r razor restructuredtext ruby rust sass scala scss shellscript slim solidity sql stylus
    svelte swift terraform tex toml typescript typescriptreact vb verilog vhdl vue vue-html xml xsl yaml
    zig astro gleam graphql jsx tsx sh bash zsh fish ps1 cmake nim odin mojo elm purescript fortran
    cobol ada apex assembly asm awk d dotenv groovy-gradle gradle hlsl glsl wgsl jinja django liquid mdx
    nunjucks twig less pug postcss razor-cshtml tcl vimscript vim xaml yml cs kt kts rb rs py js ts ex
    exs erl hs ml clj cljs
    """.split()
)


class LabelBounds:
    """Folds label values into bounded sets. Caps are per label; `on_overflow(label)` counts each fold."""

    def __init__(
        self,
        max_users: int = 500,
        max_models: int = 100,
        max_versions: int = 200,
        max_languages: int = 100,
        on_overflow: Callable[[str], None] | None = None,
    ) -> None:
        self._caps = {
            "user": max_users,
            "model": max_models,
            "editor_version": max_versions,
            "plugin": max_versions,
            "plugin_version": max_versions,
            "language": max_languages,
        }
        self._seen: dict[str, set[str]] = {label: set() for label in self._caps}
        self._on_overflow = on_overflow

    def set_caps(self, max_users: int, max_models: int) -> None:
        self._caps["user"] = max_users
        self._caps["model"] = max_models

    def _overflow(self, label: str) -> str:
        if self._on_overflow is not None:
            self._on_overflow(label)
        return OTHER

    def capped(self, label: str, value: str | None) -> str:
        """First come, first kept: up to the cap distinct values, then `other`."""
        if not value:
            return UNKNOWN
        seen = self._seen[label]
        if value in seen:
            return value
        if len(seen) >= self._caps[label]:
            return self._overflow(label)
        seen.add(value)
        return value

    def editor(self, value: str | None) -> str:
        if not value:
            return UNKNOWN
        if value in KNOWN_EDITORS or _JETBRAINS.match(value):
            return value
        return self._overflow("editor")

    def language(self, value: str | None) -> str:
        """Known language ids always; other plausible ids up to the cap; anything else is `other`."""
        if not value:
            return UNKNOWN
        if value in KNOWN_LANGUAGES:
            return value
        if not _PLAUSIBLE_LANGUAGE.match(value):
            return self._overflow("language")
        return self.capped("language", value)
