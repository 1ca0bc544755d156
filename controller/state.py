"""Persistent controller state in SQLite.

Boundary: rows for networks, endpoints and IP leases, nothing about the
kernel. Endpoint rows carry a ``state`` ('creating', 'ready', 'removing') that
is written *before* kernel work starts, so a daemon killed mid-operation knows
what to reconcile at its next start. Every method is one transaction.

Damaged state never becomes a traceback: a state dir that is not a directory
or cannot be written, a file that is not a database or fails SQLite's
``integrity_check`` all raise ``StateError`` with one line naming the file and
what to do; a write that finds the disk full raises ``StorageFull`` (HTTP 507)
and changes nothing (the transaction is rolled back). ``Store.fresh`` tells
the daemon that the file held no bpfnet state when it was opened (new, or
empty: SQLite treats a 0-byte file as an empty database), so that it never
mistakes a lost state file for "nothing exists" (see bpfnet.statecheck).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BpfnetError, Exhausted

DB_NAME = "bpfnet.db"
# sqlite3.Error.sqlite_errorcode & 0xff (the primary result code)
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    id INTEGER UNIQUE NOT NULL,
    config TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    id INTEGER UNIQUE NOT NULL,
    network TEXT NOT NULL REFERENCES networks(name),
    netns TEXT NOT NULL,
    adopted INTEGER NOT NULL,
    host_ifname TEXT NOT NULL,
    mac TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    ifname TEXT NOT NULL DEFAULT 'eth0',
    owner TEXT NOT NULL DEFAULT '',
    handoff INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS leases (
    network TEXT NOT NULL,
    address TEXT NOT NULL,
    family INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    PRIMARY KEY (network, address)
);
CREATE INDEX IF NOT EXISTS leases_by_endpoint ON leases (endpoint);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS published_ports (
    endpoint TEXT NOT NULL,
    proto TEXT NOT NULL,
    host_ip TEXT NOT NULL,  -- '' = every address
    host_port INTEGER NOT NULL,
    endpoint_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
CREATE TABLE IF NOT EXISTS endpoint_dns (
    endpoint TEXT PRIMARY KEY,
    config TEXT NOT NULL  -- JSON: hostname, aliases, dns, dns_search, dns_opt (bpfnet.dns)
);
CREATE TABLE IF NOT EXISTS dns_aliases (
    network TEXT NOT NULL,
    alias TEXT NOT NULL,  -- lowercase
    endpoint TEXT NOT NULL,
    PRIMARY KEY (network, alias, endpoint)
);
CREATE INDEX IF NOT EXISTS dns_aliases_by_endpoint ON dns_aliases (endpoint);
"""
# Columns added after the first release: (table, column, declaration), added to older files at open.
ADDED_COLUMNS = (
    ("endpoints", "ifname", "TEXT NOT NULL DEFAULT 'eth0'"),
    ("endpoints", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("endpoints", "handoff", "INTEGER NOT NULL DEFAULT 0"),
)


@dataclass(frozen=True)
class NetworkRow:
    name: str
    id: int
    config: dict[str, Any]
    is_default: bool


@dataclass(frozen=True)
class EndpointRow:
    name: str
    id: int
    network: str
    netns: str
    adopted: bool
    host_ifname: str
    mac: str
    state: str
    created: float
    # The endpoint's interface inside NETNS (a container runtime may ask for another name).
    ifname: str = "eth0"
    # Who asked for an endpoint whose namespace belongs to someone else, e.g. "cni:<container id>:<ifname>"
    # (bpfnet.plugins); "" for endpoints made through the API alone.
    owner: str = ""
    # The veth's peer was left in the managed namespace as IFNAME for the runtime to move into its
    # container and configure (Docker's remote driver model): bpfnet never configures or checks it.
    handoff: bool = False


@dataclass(frozen=True)
class LeaseRow:
    network: str
    address: str
    family: int
    endpoint: str


_ENDPOINT_COLUMNS = "name, id, network, netns, adopted, host_ifname, mac, state, created, ifname, owner, handoff"


def _endpoint_row(r: Any) -> EndpointRow:
    return EndpointRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], r[8], r[9], r[10], bool(r[11]))


class StateError(BpfnetError):
    """The state dir or file is unusable; the daemon refuses to start (one line, no traceback)."""

    status = 500


class StorageFull(Exhausted):
    """A write found the disk (or the database's page limit) full; nothing was changed."""


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _is_full(exc: sqlite3.Error) -> bool:
    return _code(exc) == SQLITE_FULL or "database or disk is full" in str(exc)


def prepare_state_dir(state_dir: str) -> Path:
    """The state directory, created if missing; StateError when it cannot be one."""
    path = Path(state_dir)
    if path.exists() and not path.is_dir():
        raise StateError(f"--state-dir {state_dir} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateError(f"--state-dir {state_dir}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"--state-dir {state_dir} is not writable by the daemon")
    return path


class Store:
    """SQLite-backed state; safe to share between the API's threads."""

    def __init__(self, state_dir: str) -> None:
        self.path = str(prepare_state_dir(state_dir) / DB_NAME)
        self._lock = threading.RLock()
        # Bumped whenever leases are deleted, so that whoever remembers "all
        # addresses below X are leased" (bpfnet.endpoints) knows when that lapsed.
        self.lease_generation = 0
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: cannot open it: {exc}") from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        advice = ("restore it from a backup, or move it away and start with --reconcile=adopt "
                  "(rebuild the state from the kernel) or --reconcile=wipe")
        try:
            # Reading the schema is the first access to the file: a file that is
            # not a database fails here, before anything is written to it.
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            check = self._db.execute("PRAGMA integrity_check(5)").fetchall()
        except sqlite3.DatabaseError as exc:
            if _code(exc) == SQLITE_NOTADB or "not a database" in str(exc):
                raise StateError(f"state file {self.path} is not a SQLite database: {advice}") from None
            if _code(exc) == SQLITE_CORRUPT or "malformed" in str(exc):
                raise StateError(f"state file {self.path} is damaged ({exc}): {advice}") from None
            raise StateError(f"state file {self.path}: cannot read it: {exc}") from None
        problems = [line.strip() for r in check for line in str(r[0]).splitlines() if line.strip()]
        if problems != ["ok"]:
            raise StateError(f"state file {self.path} fails SQLite's integrity check "
                             f"({problems[-1]}{'; …' if len(problems) > 1 else ''}): {advice}")
        self.fresh = tables == 0 or not self._has_meta()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._lock:
                self._db.executescript(SCHEMA)
                self._add_columns()
        except sqlite3.Error as exc:
            if _code(exc) == SQLITE_READONLY or "readonly" in str(exc):
                raise StateError(f"state file {self.path} is read-only for the daemon") from None
            if _is_full(exc):
                raise StateError(f"state file {self.path}: the disk is full") from None
            raise StateError(f"state file {self.path}: cannot write it: {exc}") from None

    def _add_columns(self) -> None:
        """Files written before a column existed get it, with its default for every row."""
        for table, column, declaration in ADDED_COLUMNS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def _has_meta(self) -> bool:
        try:
            row = self._db.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.Error:
            return False
        return bool(row and row[0])

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:  # SQLITE_FULL has already rolled it back
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if _is_full(exc):
                    raise StorageFull(f"cannot write the state database {self.path}: the disk is full; "
                                      "nothing was changed") from None
                if _code(exc) == SQLITE_READONLY:
                    raise StateError(f"cannot write the state database {self.path}: it became read-only; "
                                     "nothing was changed") from None
                raise

    # meta
    def claim_meta(self, key: str, value: str) -> str:
        """Set meta KEY to VALUE unless it is set; return the value it has now (one transaction)."""
        with self.tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
        return value

    # networks
    def networks(self) -> list[NetworkRow]:
        with self._lock:
            rows = self._db.execute("SELECT name, id, config, is_default FROM networks ORDER BY id").fetchall()
        return [NetworkRow(r[0], r[1], json.loads(r[2]), bool(r[3])) for r in rows]

    def network(self, name: str) -> NetworkRow | None:
        return next((n for n in self.networks() if n.name == name), None)

    def add_network(self, name: str, config: dict[str, Any], is_default: bool = False) -> int:
        with self.tx() as c:
            used = {r[0] for r in c.execute("SELECT id FROM networks")}
            net_id = next(i for i in range(1, len(used) + 2) if i not in used)
            c.execute(
                "INSERT INTO networks (name, id, config, is_default) VALUES (?, ?, ?, ?)",
                (name, net_id, json.dumps(config), int(is_default)),
            )
        return net_id

    def update_network(self, name: str, config: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute("UPDATE networks SET config = ? WHERE name = ?", (json.dumps(config), name))

    def remove_network(self, name: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM leases WHERE network = ?", (name,))
            c.execute("DELETE FROM networks WHERE name = ?", (name,))
            self.lease_generation += 1

    # endpoints
    def endpoints(self, network: str | None = None) -> list[EndpointRow]:
        q = f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints"
        args: tuple[Any, ...] = ()
        if network is not None:
            q += " WHERE network = ?"
            args = (network,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY created, name", args).fetchall()
        return [_endpoint_row(r) for r in rows]

    def count_endpoints(self, network: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM endpoints WHERE network = ?", (network,)).fetchone()[0])

    def endpoint_with_mac(self, network: str, mac: str) -> str | None:
        """Name of an endpoint of NETWORK whose MAC is MAC (lower case), if any."""
        with self._lock:
            r = self._db.execute("SELECT name FROM endpoints WHERE network = ? AND mac = ? LIMIT 1",
                                 (network, mac)).fetchone()
        return None if r is None else str(r[0])

    def endpoint(self, name: str) -> EndpointRow | None:
        with self._lock:
            r = self._db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE name = ?", (name,)).fetchone()
        return None if r is None else _endpoint_row(r)

    def endpoint_by_owner(self, owner: str) -> EndpointRow | None:
        """The endpoint a runtime's request made (OWNER as given to reserve_endpoint), if any."""
        with self._lock:
            r = self._db.execute(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE owner = ? AND owner != ''",
                                 (owner,)).fetchone()
        return None if r is None else _endpoint_row(r)

    def reserve_endpoint(
        self,
        name: str,
        network: str,
        netns: str,
        adopted: bool,
        mac: str,
        leases: list[tuple[str, int]],
        max_id: int,
        created: float,
        host_ifname_for: Any,
        ifname: str | Callable[[int], str] = "eth0",
        owner: str = "",
        handoff: bool = False,
    ) -> EndpointRow | None:
        """Insert an endpoint in state 'creating' with its leases, atomically.

        Returns None when the name exists. ``host_ifname_for(id)`` names the host veth.
        Raises sqlite3.IntegrityError when a lease is taken meanwhile.
        """
        with self.tx() as c:
            if c.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone():
                return None
            used = {r[0] for r in c.execute("SELECT id FROM endpoints")}
            ep_id = next((i for i in range(max_id) if i not in used), None)
            if ep_id is None:
                raise OverflowError(f"all {max_id} endpoint slots are in use")
            host_ifname = host_ifname_for(ep_id)
            if callable(ifname):
                ifname = ifname(ep_id)
            c.execute(
                "INSERT INTO endpoints (name, id, network, netns, adopted, host_ifname, mac, state, created, "
                "ifname, owner, handoff) VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?, ?, ?, ?)",
                (name, ep_id, network, netns, int(adopted), host_ifname, mac, created, ifname, owner,
                 int(handoff)),
            )
            for address, family in leases:
                c.execute(
                    "INSERT INTO leases (network, address, family, endpoint) VALUES (?, ?, ?, ?)",
                    (network, address, family, name),
                )
        return EndpointRow(name, ep_id, network, netns, adopted, host_ifname, mac, "creating", created, ifname,
                           owner, handoff)

    def adopt_endpoint(self, row: EndpointRow, leases: list[tuple[str, int]]) -> None:
        """Insert an endpoint found in the kernel (``--reconcile=adopt``) as it is:
        its id is its host veth's number. sqlite3.IntegrityError if the name, id or
        a lease is taken."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO endpoints (name, id, network, netns, adopted, host_ifname, mac, state, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.name, row.id, row.network, row.netns, int(row.adopted), row.host_ifname, row.mac,
                 row.state, row.created),
            )
            for address, family in leases:
                c.execute("INSERT INTO leases (network, address, family, endpoint) VALUES (?, ?, ?, ?)",
                          (row.network, address, family, row.name))

    def set_endpoint_netns(self, name: str, netns: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE endpoints SET netns = ? WHERE name = ?", (netns, name))

    def set_endpoint_state(self, name: str, state: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE endpoints SET state = ? WHERE name = ?", (state, name))

    def remove_endpoint(self, name: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM leases WHERE endpoint = ?", (name,))
            c.execute("DELETE FROM published_ports WHERE endpoint = ?", (name,))
            c.execute("DELETE FROM endpoint_dns WHERE endpoint = ?", (name,))
            c.execute("DELETE FROM dns_aliases WHERE endpoint = ?", (name,))
            c.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            self.lease_generation += 1

    # leases
    def leases(self, network: str | None = None) -> list[LeaseRow]:
        q = "SELECT network, address, family, endpoint FROM leases"
        args: tuple[Any, ...] = ()
        if network is not None:
            q += " WHERE network = ?"
            args = (network,)
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [LeaseRow(*r) for r in rows]

    def leased_addresses(self, network: str) -> list[str]:
        """Just the addresses leased on a network (the hot part of every endpoint add)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT address FROM leases WHERE network = ?", (network,))]

    def endpoint_leases(self, endpoint: str) -> list[LeaseRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT network, address, family, endpoint FROM leases WHERE endpoint = ?", (endpoint,)
            ).fetchall()
        return [LeaseRow(*r) for r in rows]

    def remove_orphan_leases(self) -> list[LeaseRow]:
        """Delete leases whose endpoint row no longer exists; return them."""
        with self.tx() as c:
            rows = c.execute(
                "SELECT network, address, family, endpoint FROM leases "
                "WHERE endpoint NOT IN (SELECT name FROM endpoints)"
            ).fetchall()
            c.execute("DELETE FROM leases WHERE endpoint NOT IN (SELECT name FROM endpoints)")
            self.lease_generation += 1
        return [LeaseRow(*r) for r in rows]

    # published ports (bpfnet.outside): rows of (endpoint, proto, host_ip or "", host_port, endpoint_port)
    def published_ports(self, endpoint: str | None = None) -> list[tuple[str, str, str, int, int]]:
        q = "SELECT endpoint, proto, host_ip, host_port, endpoint_port FROM published_ports"
        args: tuple[Any, ...] = ()
        if endpoint is not None:
            q += " WHERE endpoint = ?"
            args = (endpoint,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY proto, host_port, host_ip", args).fetchall()
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    def add_published_ports(self, endpoint: str, ports: list[tuple[str, str, int, int]]) -> None:
        """(proto, host_ip or "", host_port, endpoint_port) rows, all or none;
        sqlite3.IntegrityError when one is taken."""
        with self.tx() as c:
            c.executemany("INSERT INTO published_ports (endpoint, proto, host_ip, host_port, endpoint_port) "
                          "VALUES (?, ?, ?, ?, ?)", [(endpoint, *p) for p in ports])

    def remove_published_ports(self, endpoint: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM published_ports WHERE endpoint = ?", (endpoint,))

    # DNS (bpfnet.dns): an endpoint's hostname, aliases and resolver settings
    def set_endpoint_dns(self, endpoint: str, network: str, config: dict[str, Any], aliases: list[str]) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO endpoint_dns (endpoint, config) VALUES (?, ?)",
                      (endpoint, json.dumps(config)))
            c.execute("DELETE FROM dns_aliases WHERE endpoint = ?", (endpoint,))
            c.executemany("INSERT INTO dns_aliases (network, alias, endpoint) VALUES (?, ?, ?)",
                          [(network, a, endpoint) for a in aliases])

    def remove_endpoint_dns(self, endpoint: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM endpoint_dns WHERE endpoint = ?", (endpoint,))
            c.execute("DELETE FROM dns_aliases WHERE endpoint = ?", (endpoint,))

    def endpoint_dns(self, endpoint: str | None = None) -> dict[str, dict[str, Any]]:
        """endpoint -> its DNS config (every endpoint's, or ENDPOINT's)."""
        q = "SELECT endpoint, config FROM endpoint_dns"
        args: tuple[Any, ...] = ()
        if endpoint is not None:
            q += " WHERE endpoint = ?"
            args = (endpoint,)
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def alias_owner(self, network: str, alias: str, other_than: str = "") -> str | None:
        """An endpoint of NETWORK (not OTHER_THAN) that has the alias ALIAS (lowercase)."""
        with self._lock:
            row = self._db.execute("SELECT endpoint FROM dns_aliases WHERE network = ? AND alias = ? "
                                   "AND endpoint != ? LIMIT 1", (network, alias, other_than)).fetchone()
        return None if row is None else str(row[0])

    def endpoint_named(self, network: str, name: str) -> str | None:
        """The endpoint of NETWORK whose name is NAME, compared as DNS does (case-insensitively)."""
        with self._lock:
            row = self._db.execute("SELECT name FROM endpoints WHERE network = ? AND lower(name) = ? LIMIT 1",
                                   (network, name.lower())).fetchone()
        return None if row is None else str(row[0])
