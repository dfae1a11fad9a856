"""Bounded label values: known sets, plausible languages up to a cap, per-label caps, overflow counting."""

from __future__ import annotations

from exporter.labels import LabelBounds


def test_editors() -> None:
    folded: list[str] = []
    b = LabelBounds(on_overflow=folded.append)
    assert [b.editor(v) for v in ("vscode", "jetbrains-iu", "neovim", "cli", None, "'; drop table", "x" * 500)] == [
        "vscode",
        "jetbrains-iu",
        "neovim",
        "cli",
        "unknown",
        "other",
        "other",
    ]
    assert folded == ["editor", "editor"]


def test_languages_known_plausible_capped_and_hostile() -> None:
    folded: list[str] = []
    b = LabelBounds(max_languages=2, on_overflow=folded.append)
    assert b.language("python") == "python"
    assert b.language("coq") == "coq"
    assert b.language("idris") == "idris"
    assert b.language("agda") == "other"  # over the cap of plausible unknown ids
    assert b.language("python") == "python"  # known ids never count against the cap
    assert b.language("<script>") == "other"
    assert b.language(None) == "unknown"
    assert folded == ["language", "language"]


def test_caps_are_first_come_first_kept() -> None:
    folded: list[str] = []
    b = LabelBounds(max_users=2, on_overflow=folded.append)
    assert [b.capped("user", u) for u in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]
    b.set_caps(max_users=3, max_models=1)
    assert b.capped("user", "e") == "e"
    assert folded == ["user", "user"]
