"""Team membership: user -> teams from a YAML/CSV map file and LDAP groups, reloaded on change, small teams folded.

The event loop only ever reads `TeamDirectory.of(user)`, a lookup in an immutable `TeamIndex` that the writer
thread (file poll) and the LDAP thread swap in whole. Teams with fewer members than the minimum size are shown
as `other` everywhere: the folding happens here, once, so no output can name a team below the minimum.
With a pseudonym key the names of the map and of LDAP are pseudonymised when loaded, with the same keyed hash
the proxy applies to its users, so the real names never reach an output and pseudonymous users keep their teams.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.identity import clean, pseudonym
from exporter.values import quick_init

if TYPE_CHECKING:  # settings -> budgets -> insight -> teams: at run time TeamOptions is imported where used
    from exporter.settings import TeamOptions

log = logging.getLogger("copilot_proxy_insight")

OTHER_TEAM = "other"
MAX_TEAMS_PER_USER = 32  # a user in hundreds of LDAP groups must not blow up the info metric or the log line
MAX_MAP_BYTES = 20_000_000
_NAME_LIMIT = 128

Groups = dict[str, set[str]]  # team -> member user names


class TeamMapError(ValueError):
    """A team map that cannot be used; the message names the file and the line."""


def _name(value: Any) -> str | None:
    text = clean(str(value).strip(), _NAME_LIMIT) if value is not None else None
    return text or None


def _add(groups: Groups, team: Any, user: Any, where: str) -> None:
    team_name, user_name = _name(team), _name(user)
    if team_name is None or user_name is None:
        raise TeamMapError(f"{where}: expected a user and a team name")
    groups.setdefault(team_name, set()).add(user_name)


def parse_csv(text: str, source: str) -> Groups:
    """`user,team` rows (one per membership; an optional `user,team` header; `#` comments)."""
    groups: Groups = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells[:2]] == ["user", "team"]:
            continue
        if len(cells) != 2:
            raise TeamMapError(f"{source}: line {number}: expected user,team (got {len(cells)} fields)")
        _add(groups, cells[1], cells[0], f"{source}: line {number}")
    return groups


def parse_yaml(text: str, source: str) -> Groups:
    """`team: [user, ...]` (a mapping of team names to lists of users)."""
    from ruamel.yaml import YAML  # mitmproxy's own YAML library
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe", pure=True).load(text)
    except YAMLError as e:
        raise TeamMapError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise TeamMapError(f"{source}: expected a mapping of team names to lists of users")
    groups: Groups = {}
    for team, users in doc.items():
        if not isinstance(users, list):
            raise TeamMapError(f"{source}: team {team!r}: expected a list of users")
        groups.setdefault(_name(team) or "", set())
        for user in users:
            _add(groups, team, user, f"{source}: team {team!r}")
    groups.pop("", None)
    return groups


def parse_map(text: str, source: str) -> Groups:
    """A map file by its suffix: .csv, or .yaml/.yml."""
    suffix = Path(source).suffix.lower()
    if suffix == ".csv":
        return parse_csv(text, source)
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, source)
    raise TeamMapError(f"{source}: expected a .csv, .yaml or .yml file")


def read_map(path: Path) -> Groups:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MAP_BYTES + 1)
    except OSError as e:
        raise TeamMapError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_MAP_BYTES:
        raise TeamMapError(f"{path}: larger than {MAX_MAP_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TeamMapError(f"{path}: not UTF-8 text") from None
    return parse_map(text, str(path))


@quick_init
@dataclass(frozen=True, slots=True)
class TeamIndex:
    """Each user's shown teams (small teams already folded into `other`), and every team's member count."""

    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    min_size: int = 5

    def shown(self) -> frozenset[str]:
        """The team names that may appear in outputs."""
        return frozenset(t for t, n in self.sizes.items() if n >= self.min_size) | (
            {OTHER_TEAM} if any(n < self.min_size for n in self.sizes.values()) else frozenset()
        )


def build_index(sources: Iterable[Mapping[str, Iterable[str]]], min_size: int, pseudonym_key: str = "") -> TeamIndex:
    """Merges group maps (team -> users), pseudonymises the users with the key, folds teams under `min_size`."""
    members: dict[str, set[str]] = {}
    for groups in sources:
        for team, users in groups.items():
            bucket = members.setdefault(team, set())
            for user in users:
                bucket.add(pseudonym(user, pseudonym_key) if pseudonym_key else user)
    sizes = {team: len(users) for team, users in members.items()}
    per_user: dict[str, set[str]] = {}
    for team, users in members.items():
        shown = team if sizes[team] >= min_size else OTHER_TEAM
        for user in users:
            per_user.setdefault(user, set()).add(shown)
    users = {user: tuple(sorted(teams)[:MAX_TEAMS_PER_USER]) for user, teams in per_user.items()}
    return TeamIndex(users, sizes, min_size)


class _FileSource:
    """The map file, re-read when its mtime, size or inode changes (an editor's save or an atomic replace)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.groups: Groups = {}

    def poll(self) -> bool:
        """True when the file changed and was re-read; raises TeamMapError (the last good map is kept)."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise TeamMapError(f"{self.path}: cannot read: {e.strerror or e}") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self.stamp:
            return False
        groups = read_map(self.path)
        self.stamp = stamp
        self.groups = groups
        return True


class TeamDirectory:
    """The current team index; `of(user)` on the event loop, reloads on the writer and LDAP threads."""

    def __init__(
        self,
        on_error: Callable[[str, str], None],
        on_ok: Callable[[str], None] | None = None,
        ldap_fetch: Callable[[TeamOptions], Groups] | None = None,
    ) -> None:
        self._on_error = on_error  # (component, message): counted in copilot_exporter_errors_total and logged
        self._on_ok = on_ok or (lambda component: None)  # a failing component works again
        self._ldap_fetch = ldap_fetch
        self._lock = threading.Lock()  # serialises rebuilds (writer and LDAP threads); readers never take it
        self.index = TeamIndex()
        self.version = 0
        from exporter.settings import TeamOptions

        self.options = TeamOptions()
        self._pseudonym_key = ""
        self._file: _FileSource | None = None
        self._ldap_groups: Groups = {}
        self._ldap_stop = threading.Event()
        self._ldap_thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    def of(self, user: str) -> tuple[str, ...]:
        return self.index.users.get(user, ())

    def configure(self, options: TeamOptions, pseudonym_key: str) -> None:
        """New options: the file is read now (errors are reported, the proxy goes on without teams)."""
        self.stop()
        with self._lock:
            self.options = options
            self._pseudonym_key = pseudonym_key
            self._file = _FileSource(Path(options.map_path)) if options.map_path else None
            self._ldap_groups = {}
        self.poll()
        if options.ldap_url:
            self._ldap_stop = threading.Event()
            self._ldap_thread = threading.Thread(
                target=self._ldap_loop, args=(options, self._ldap_stop), name="copilot-proxy-insight-ldap", daemon=True
            )
            self._ldap_thread.start()
        self._rebuild()

    def poll(self) -> bool:
        """Writer thread: re-reads the map file when it changed; True when the index changed."""
        source = self._file
        if source is None:
            return False
        try:
            changed = source.poll()
        except TeamMapError as e:
            self._on_error("team_map", f"{e} (keeping the last good team map)")
            return False
        self._on_ok("team_map")
        if changed:
            self._rebuild()
            log.info("copilot-proxy-insight: team map %s loaded (%d teams)", source.path, len(source.groups))
        return changed

    def _rebuild(self) -> None:
        with self._lock:
            sources = [s for s in (self._file.groups if self._file else {}, self._ldap_groups) if s]
            index = build_index(sources, self.options.min_size, self._pseudonym_key)
            if index != self.index:
                self.index = index  # one reference swap: the event loop sees the old or the new index, whole
                self.version += 1

    def _ldap_loop(self, options: TeamOptions, stop: threading.Event) -> None:
        fetch = self._ldap_fetch or fetch_ldap_groups
        while not stop.is_set():
            try:
                groups = fetch(options)
            except Exception as e:  # a directory that is down must never stop the proxy: keep the last groups
                self._on_error("team_ldap", f"LDAP group lookup at {options.ldap_url} failed: {e}")
            else:
                self._on_ok("team_ldap")
                if not stop.is_set():
                    with self._lock:
                        self._ldap_groups = groups
                    self._rebuild()
            stop.wait(options.ldap_refresh_s)

    def stop(self) -> None:
        self._ldap_stop.set()
        thread, self._ldap_thread = self._ldap_thread, None
        if thread is not None:
            thread.join(timeout=5)


def first_rdn_value(dn: str) -> str | None:
    """`uid=alice,ou=people,dc=example` -> `alice` (how a member DN names its user)."""
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (LDAPInvalidDnError, ValueError, IndexError):
        return None
    return _unescape(str(parts[0][1])) if parts else None


_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)", re.DOTALL)


def _unescape(value: str) -> str:
    """An RDN value without RFC 4514 escapes (`Jane\\, Smith`, `\\c3\\a9` for é)."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(value):
        out += value[pos : m.start()].encode()
        code = m.group(1)
        out += bytes.fromhex(code) if len(code) == 2 else code.encode()
        pos = m.end()
    out += value[pos:].encode()
    return out.decode("utf-8", errors="replace")


def groups_from_entries(entries: Iterable[Mapping[str, Any]]) -> Groups:
    """Team (the group's cn) -> users (memberUid values, and the first RDN value of member/uniqueMember DNs)."""
    groups: Groups = {}
    for attrs in entries:
        cn = attrs.get("cn")
        team = _name(cn[0] if isinstance(cn, list) and cn else cn)
        if team is None:
            continue
        users = groups.setdefault(team, set())
        for uid in _values(attrs.get("memberUid")):
            if (name := _name(uid)) is not None:
                users.add(name)
        for dn in [*_values(attrs.get("member")), *_values(attrs.get("uniqueMember"))]:
            if (name := _name(first_rdn_value(str(dn)))) is not None:
                users.add(name)
    return groups


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def ldap_connection(options: TeamOptions) -> Any:
    """A read-only, bound connection to the directory (ldaps:// for TLS; StartTLS is not used)."""
    import ldap3

    server = ldap3.Server(options.ldap_url, connect_timeout=10, get_info=ldap3.NONE)
    return ldap3.Connection(
        server,
        user=options.ldap_bind_dn or None,
        password=options.ldap_password or None,
        auto_bind=True,
        read_only=True,
        receive_timeout=30,
    )


def fetch_ldap_groups(options: TeamOptions, connect: Callable[[TeamOptions], Any] = ldap_connection) -> Groups:
    """Every group under the base matching the filter, with its members (paged: large directories work)."""
    conn = connect(options)
    try:
        entries = conn.extend.standard.paged_search(
            options.ldap_base,
            options.ldap_filter,
            attributes=["cn", "member", "uniqueMember", "memberUid"],
            paged_size=500,
            generator=True,
        )
        return groups_from_entries(e["attributes"] for e in entries if e.get("type") == "searchResEntry")
    finally:
        conn.unbind()
