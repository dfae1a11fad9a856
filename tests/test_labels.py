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


# -- user slots (hardening #5: a flood of made-up user names must not blind /metrics for real users) --------


def test_made_up_names_fill_free_slots_but_never_keep_a_real_user_out() -> None:
    from exporter.labels import UserSlots

    slots = UserSlots(max_users=3)
    assert [slots.label(f"junk{i}", False, 0.0)[0] for i in range(5)] == ["junk0", "junk1", "junk2", "other", "other"]
    # A user whose model call succeeded takes the slot of the oldest user who never had one.
    assert slots.label("alice", True, 1.0) == ("alice", "junk0")
    assert slots.label("bob", True, 2.0) == ("bob", "junk1")
    assert slots.label("carol", True, 3.0) == ("carol", "junk2")
    # Now every slot is an active user's: junk folds, and so does a new active user while nobody is idle.
    assert slots.label("junk9", False, 4.0) == ("other", None)
    assert slots.label("dave", True, 5.0) == ("other", None)
    # A failing call of a known user keeps their label.
    assert slots.label("alice", False, 6.0) == ("alice", None)


def test_an_idle_active_user_gives_the_slot_to_a_new_active_one() -> None:
    from exporter.labels import USER_IDLE_S, UserSlots

    slots = UserSlots(max_users=2)
    slots.label("alice", True, 0.0)
    slots.label("bob", True, USER_IDLE_S / 2)
    assert slots.label("carol", True, USER_IDLE_S - 1) == ("other", None)  # alice not idle long enough yet
    assert slots.label("carol", True, USER_IDLE_S + 1) == ("carol", "alice")
    assert slots.label("bob", True, USER_IDLE_S + 2) == ("bob", None)


def test_a_displaced_users_series_leave_prometheus() -> None:
    from exporter.sinks.prometheus import PrometheusSink
    from tests.factories import Driven, event

    sink = Driven(PrometheusSink(), max_users=2)
    for i in range(2):  # made-up names whose calls fail (e.g. proxyauth=any and no Copilot token)
        sink.handle(event(user=f"junk{i}", status=401, counted=False, skip_reason="http_error"))
    g = sink.registry.get_sample_value
    assert (
        g("copilot_user_errors_total", {"user": "junk0", "kind": "completion", "code": "401", "error_code": "none"})
        == 1
    )
    sink.handle(event(user="alice"))  # a real user: takes junk0's slot, junk0's series go
    requests = {"user": "alice", "editor": "vscode", "language": "python", "kind": "completion"}
    assert g("copilot_requests_total", requests) == 1
    assert (
        g("copilot_user_errors_total", {"user": "junk0", "kind": "completion", "code": "401", "error_code": "none"})
        is None
    )
    assert (
        g("copilot_user_errors_total", {"user": "junk1", "kind": "completion", "code": "401", "error_code": "none"})
        == 1
    )
    sink.handle(event(user="bob"))
    assert g("copilot_requests_total", {**requests, "user": "bob"}) == 1
    sink.handle(event(user="mallory", status=401, counted=False, skip_reason="http_error"))
    assert (
        g("copilot_user_errors_total", {"user": "other", "kind": "completion", "code": "401", "error_code": "none"})
        == 1
    )
