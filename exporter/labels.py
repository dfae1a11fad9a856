"""Bounded label values: known sets and per-label caps, folding the rest into `other` and counting it."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable

OnOverflow = Callable[[str], None] | None

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
            "server": max_versions,  # MCP server names (governance): hosts and labels from the network
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
        kept, folded = self.cap(label, value)
        return self._overflow(label) if folded else kept

    def cap(self, label: str, value: str | None) -> tuple[str, bool]:
        """`capped` without counting: the value kept, and whether it was folded."""
        if not value:
            return UNKNOWN, False
        seen = self._seen[label]
        if value in seen:
            return value, False
        if len(seen) >= self._caps[label]:
            return OTHER, True
        seen.add(value)
        return value, False

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


# Labels whose values come from the network; these fold into `other` once the series cap is reached.
FOLDABLE = frozenset({"user", "editor", "language", "model", "editor_version", "plugin", "plugin_version", "server"})
# Labels capped by first come, first kept (editor and language are bounded when the event is built; users
# by their UserSlots, before the policy sees the labels).
_CAPPED = frozenset({"model", "editor_version", "plugin", "plugin_version", "server"})
USER_IDLE_S = 24 * 3600.0  # an active user idle this long may give their slot to a new active user


class UserSlots:
    """The user label's slots. A user whose calls succeed (`active`) is kept and can displace, when the cap
    is full, a user who never had a successful model call (the oldest such first), else the active user idle
    longest if idle over `idle_s`. A new user without a successful call gets a slot only while one is free.
    So a flood of made-up user names (proxyauth=any) can fill free slots, never keep real users out."""

    def __init__(self, max_users: int = 500, idle_s: float = USER_IDLE_S) -> None:
        self.max_users = max_users
        self.idle_s = idle_s
        self._active: OrderedDict[str, float] = OrderedDict()  # user -> last successful call, oldest first
        self._provisional: OrderedDict[str, None] = OrderedDict()  # users without a successful call yet

    def __len__(self) -> int:
        return len(self._active) + len(self._provisional)

    def label(self, user: str, active: bool, now: float) -> tuple[str, str | None]:
        """The label value for `user`, and the user whose slot it took (their series are to be dropped)."""
        if not user:
            return UNKNOWN, None
        if user in self._active:
            if active:
                self._active[user] = now
                self._active.move_to_end(user)
            return user, None
        if user in self._provisional:
            if active:
                del self._provisional[user]
                self._active[user] = now
            return user, None
        evicted = None
        if len(self) >= self.max_users:
            if not active:
                return OTHER, None
            evicted = self._evict(now)
            if evicted is None:
                return OTHER, None
        if active:
            self._active[user] = now
        else:
            self._provisional[user] = None
        return user, evicted

    def _evict(self, now: float) -> str | None:
        if self._provisional:
            return self._provisional.popitem(last=False)[0]
        oldest = next(iter(self._active.items()), None)
        if oldest is not None and now - oldest[1] >= self.idle_s:
            del self._active[oldest[0]]
            return oldest[0]
        return None


class LabelPolicy:
    """The one place label values are bounded for every metric sink: user slots, per-label caps, then the
    series cap.

    The dispatcher first decides the event's user label (`user`), then `bound(metric, labels, names,
    folded)` returns the label values sinks record. Past `max_series` distinct label sets, a new set has its
    network-derived values folded into `other`. Results are cached by their input values (the mapping of a
    value never changes once made); each fold is counted once per event, through `folded`, the set of labels
    already counted for the event at hand. A user displaced from their slot is reported through
    `on_evict(user)`, so the sinks can drop that user's series.
    """

    def __init__(
        self,
        max_users: int = 500,
        max_models: int = 100,
        max_series: int = 10_000,
        on_overflow: OnOverflow = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.bounds = LabelBounds(max_users=max_users, max_models=max_models, on_overflow=on_overflow)
        self.users = UserSlots(max_users)
        self.max_series = max_series
        self._on_overflow = on_overflow
        self._on_evict = on_evict
        self._series: set[tuple[str, ...]] = set()
        self._cache: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._plans: dict[str, tuple[tuple[str | None, bool], ...]] = {}

    def set_caps(self, max_users: int, max_models: int, max_series: int) -> None:
        self.bounds.set_caps(max_users=max_users, max_models=max_models)
        self.users.max_users = max_users
        self.max_series = max_series
        self._cache.clear()

    def user(self, user: str, active: bool, now: float, folded: set[str]) -> str:
        """The user label of an event (`active`: a successful model call), counting a fold once per event."""
        label, evicted = self.users.label(user, active, now)
        if evicted is not None:
            self._cache.clear()
            self._series = {s for s in self._series if evicted not in s[1:]}
            if self._on_evict is not None:
                self._on_evict(evicted)
        if label == OTHER and user != OTHER and "user" not in folded:
            folded.add("user")
            if self._on_overflow is not None:
                self._on_overflow("user")
        return label

    def _plan(self, metric: str, names: tuple[str, ...]) -> tuple[tuple[str | None, bool], ...]:
        plan = self._plans.get(metric)
        if plan is None:
            plan = tuple((name if name in _CAPPED else None, name in FOLDABLE) for name in names)
            self._plans[metric] = plan
        return plan

    def _compute(
        self, metric: str, labels: tuple[str, ...], names: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        plan = self._plan(metric, names)
        values: list[str] = []
        folds: list[str] = []
        for (cap, _), value in zip(plan, labels, strict=True):
            if cap is None:
                values.append(value)
                continue
            kept, folded = self.bounds.cap(cap, value)
            values.append(kept)
            if folded:
                folds.append(cap)
        series = (metric, *values)
        if series not in self._series:
            if len(self._series) >= self.max_series:
                values = [OTHER if fold else v for (_, fold), v in zip(plan, values, strict=True)]
                series = (metric, *values)
                folds.append("series")
            self._series.add(series)
        return tuple(values), tuple(folds)

    def bound(self, metric: str, labels: tuple[str, ...], names: tuple[str, ...], folded: set[str]) -> tuple[str, ...]:
        key = (metric, *labels)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._compute(metric, labels, names)
            if len(self._cache) >= 4 * self.max_series:
                self._cache.clear()  # hostile raw values: keep the cache bounded (the mapping itself is kept)
            self._cache[key] = hit
        values, folds = hit
        for label in folds:
            if label not in folded:
                folded.add(label)
                if self._on_overflow is not None:
                    self._on_overflow(label)
        return values
