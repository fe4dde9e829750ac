"""One PostgreSQL database put back as seeded table by table, in place, from copies of its rows
taken after the seed.

Measured on fuse-overlayfs (PostgreSQL 15): cloning a database of 10,000 seeded rows from a
template takes 100-300 ms of the engine's disk (and a drop 130 ms more), a cost that tests shorter
than it wait for; emptying a table of 10,000 rows and copying them back, 30 ms; undoing only the
rows a test wrote, a few. Which tables changed comes from the server's own counters
(``pg_stat_user_tables``), read after the connections of the database have ended (a backend hands
its counts in as it exits). In a table with a primary key, the rows a test wrote are those that
no restore of ours wrote (their ``xmin``); they go, and the seed's rows missing by key come back.
Other tables are emptied and filled again. A change of the schema (``CREATE``, ``ALTER``, ``DROP``,
``REFRESH``, noticed by an event trigger) cannot be undone row by row: the caller swaps a whole
clone in instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_dockapp.core.errors import DockappError

if TYPE_CHECKING:
    from pytest_dockapp.services.state.session import SqlSession

SCHEMA = "_dockapp_seed"  # the seed's copies, the schema-change flag and its event trigger

_USER_TABLES = (
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
    f"AND c.relpersistence <> 't' AND n.nspname NOT IN ('information_schema', '{SCHEMA}') "
    "AND n.nspname NOT LIKE 'pg\\_%'"
)
# A TRUNCATE moves no counter of a table whose counters are all zero (a clone's start at zero):
# it gives the table a new file, though. A sequence's value is on its page at every nextval()
# (its WAL only every 32nd time), so the sequences are compared as values.
_COUNTS = (
    "SELECT 'n|' || relid || '|' || concat_ws(',', n_tup_ins, n_tup_upd, n_tup_del, n_live_tup, n_dead_tup, "
    f"pg_relation_filenode(relid)) FROM pg_stat_user_tables WHERE schemaname <> '{SCHEMA}';\n"
    "SELECT 'n|sequences|' || coalesce(string_agg(coalesce(last_value::text, '-'), ',' "
    f"ORDER BY schemaname, sequencename), '') FROM pg_sequences WHERE schemaname <> '{SCHEMA}';"
)
_FLAG = f"""CREATE TABLE {SCHEMA}.ddl (at timestamptz);
CREATE FUNCTION {SCHEMA}.ddl() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog AS $$
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary) THEN
      INSERT INTO {SCHEMA}.ddl VALUES (now());
    END IF;
  ELSIF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                WHERE schema_name IS NULL OR schema_name NOT LIKE 'pg\\_temp%') THEN
    INSERT INTO {SCHEMA}.ddl VALUES (now());
  END IF;
EXCEPTION WHEN OTHERS THEN NULL;  -- never the app's DDL failing for our bookkeeping
END $$;
CREATE EVENT TRIGGER {SCHEMA}_ddl ON ddl_command_end EXECUTE FUNCTION {SCHEMA}.ddl();
CREATE EVENT TRIGGER {SCHEMA}_drop ON sql_drop EXECUTE FUNCTION {SCHEMA}.ddl();"""
# Ends every other connection of the database and waits until they are gone: a backend's counts
# reach pg_stat_user_tables as it exits, and pg_stat_activity is read once per transaction unless
# its snapshot is cleared.
_END_CONNECTIONS = (
    "DO $$ BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid(); "
    "FOR i IN 1..2500 LOOP PERFORM pg_stat_clear_snapshot(); EXIT WHEN NOT EXISTS (SELECT 1 FROM "
    "pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()); "
    "PERFORM pg_sleep(0.002); END LOOP; END $$;"
)


def _counters(rows: list[str]) -> dict[str, str]:
    """What :data:`_COUNTS` printed: each table's counters by oid, and the sequences' values."""
    return dict(row[2:].split("|", 1) for row in rows if row.startswith("n|"))


@dataclass
class _Table:
    name: str  # schema-qualified, quoted
    columns: str  # all but the generated ones
    key: str = ""  # the primary key's columns
    ours: list[str] = field(default_factory=list)  # our restores' transactions: the seed's rows carry them

    def undo(self, oid: str) -> list[str]:
        """Remove the rows that none of our restores wrote, and bring back the seed's rows missing by key."""
        key = ", ".join(f"t.{k}" for k in self.key.split(","))
        seed_key = ", ".join(f"s.{k}" for k in self.key.split(","))
        return [
            f"DELETE FROM ONLY {self.name} WHERE xmin NOT IN ({', '.join(f'{x!r}::xid' for x in self.ours)});",
            f"INSERT INTO {self.name} ({self.columns}) OVERRIDING SYSTEM VALUE SELECT {self.columns} "
            f"FROM {SCHEMA}.t{oid} s WHERE NOT EXISTS (SELECT 1 FROM ONLY {self.name} t WHERE ({key}) = ({seed_key}));",
        ]


_MAX_OURS = 16  # then a table is emptied and filled again, which leaves one transaction to know


@dataclass
class RowCopies:
    """The seed's rows of every table of one database, and what a restore needs to put them back:
    each table's columns (generated ones left out), which tables refer to which (a table emptied
    takes those that refer to it along), and the sequences' values."""

    tables: dict[str, _Table] = field(default_factory=dict)  # by oid
    referrers: dict[str, set[str]] = field(default_factory=dict)  # oid: the oids of tables referring to it
    sequences: str = ""  # one SELECT of setval() calls
    counts: dict[str, str] = field(default_factory=dict)  # oid: the server's counters at the last restore
    counted: bool = True  # the server counts writes (track_counts); else every table is put back
    stamp: str = ""  # the transaction of ours whose rows the templates hold

    @classmethod
    def take(cls, psql: SqlSession) -> RowCopies:
        """Copy every table of the database ``psql`` is connected to into :data:`SCHEMA`, and
        install the event trigger that flags a change of the schema."""
        psql.run(
            # An app's transaction left open would hold the tables that the copies read and the
            # first restore empties.
            f"{_END_CONNECTIONS}\n"
            f"DROP EVENT TRIGGER IF EXISTS {SCHEMA}_ddl; DROP EVENT TRIGGER IF EXISTS {SCHEMA}_drop;\n"
            f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};"
        )
        rows = psql.run(
            "SELECT 't|' || c.oid || '|' || format('%I.%I', n.nspname, c.relname) || '|' || coalesce(("
            "SELECT string_agg(quote_ident(a.attname), ',' ORDER BY a.attnum) FROM pg_attribute a "
            "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '') "
            f"{_USER_TABLES};\n"
            "SELECT 'k|' || i.indrelid || '|' || string_agg(quote_ident(a.attname), ',' ORDER BY a.attnum) "
            "FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indisprimary GROUP BY i.indrelid;\n"
            # A partitioned table's rows are in its leaves (a table of no partitions has no tree).
            "WITH leaves AS (SELECT c.oid AS top, coalesce(t.relid::oid, c.oid) AS leaf FROM pg_class c "
            "LEFT JOIN LATERAL pg_partition_tree(c.oid) t ON t.isleaf WHERE c.relkind IN ('r', 'p')) "
            "SELECT 'f|' || l.leaf || '|' || r.leaf FROM pg_constraint k JOIN leaves l ON l.top = k.conrelid "
            "JOIN leaves r ON r.top = k.confrelid WHERE k.contype = 'f';\n"
            "SELECT 's|' || coalesce(string_agg(format('setval(%L, %s, %s)', format('%I.%I', schemaname, "
            "sequencename), coalesce(last_value, start_value), (last_value IS NOT NULL)::text), ', '), '') "
            f"FROM pg_sequences WHERE schemaname <> '{SCHEMA}';\n"
            "SELECT 'c|' || current_setting('track_counts');"
        )
        copies = cls()
        for kind, *parts in (row.split("|") for row in rows if row[1:2] == "|"):
            if kind == "t" and parts[2]:  # a table with no column but generated ones has no rows to keep
                copies.tables[parts[0]] = _Table(parts[1], parts[2])
            elif kind == "k" and parts[0] in copies.tables:
                copies.tables[parts[0]].key = parts[1]
            elif kind == "f":
                copies.referrers.setdefault(parts[1], set()).add(parts[0])
            elif kind == "c":
                copies.counted = parts[0] == "on"
            elif kind == "s" and parts[0]:
                copies.sequences = f"SELECT {parts[0]};"
        psql.run(
            "\n".join(
                f"CREATE TABLE {SCHEMA}.t{oid} AS SELECT {table.columns} FROM ONLY {table.name};"
                for oid, table in copies.tables.items()
            )
            + "\n"
            + _FLAG
        )
        # Every row now carries a transaction of ours, and so do the templates copied from it next:
        # a clone swapped in later has the rows a restore of ours wrote.
        copies.stamp = copies.put_back(psql, set(copies.tables)) or ""
        return copies

    def restore(self, psql: SqlSession) -> bool:
        """Put back the tables and sequences changed since the last restore (one round trip when
        nothing was); False (nothing done) when the schema changed, which only a clone of the
        whole database undoes. A connection that opens meanwhile and holds a lock makes it wait
        at most 3 s; then the connections are ended again, twice at most."""
        for attempt in range(3):
            rows = psql.run(f"{_END_CONNECTIONS}\nSELECT 'd|' || count(*) FROM {SCHEMA}.ddl;\n{_COUNTS}")
            if "d|0" not in rows:
                return False
            now = _counters(rows)
            changed = {oid for oid in self.tables if now.get(oid) != self.counts.get(oid) or not self.counted}
            if not changed and now.get("sequences") == self.counts.get("sequences"):
                return True
            try:
                self.put_back(psql, changed)
                return True
            except DockappError as exc:  # the transaction was rolled back: nothing is half done
                if "lock timeout" not in (exc.evidence or "") or attempt == 2:
                    raise
        return True

    def put_back(self, psql: SqlSession, changed: set[str]) -> str | None:
        """Undo what was written to ``changed`` (emptied and filled again where a table has no
        primary key, or none or too many of our transactions; those that refer to it with it), set
        every sequence as seeded, and note the counters as they are after it. Returns the
        transaction that wrote (None when no table changed)."""
        emptied: set[str] = set()
        todo = [oid for oid in changed if not self.tables[oid].key or not 0 < len(self.tables[oid].ours) < _MAX_OURS]
        while todo:
            oid = todo.pop()
            if oid in self.tables and oid not in emptied:
                emptied.add(oid)
                todo += self.referrers.get(oid, ())
        undone = sorted(changed - emptied)
        sql = []
        if emptied or undone:
            # Replica role: the copies go in without firing the app's triggers or checking foreign
            # keys (the seed satisfied them); the restore need not reach the disk before the test.
            sql.append(
                "BEGIN; SET LOCAL session_replication_role = replica; SET LOCAL synchronous_commit = off; "
                "SET LOCAL lock_timeout = '3s';"
            )
            if emptied:
                sql.append("TRUNCATE " + ", ".join(f"ONLY {self.tables[oid].name}" for oid in sorted(emptied)) + ";")
            for oid in sorted(emptied):
                table = self.tables[oid]
                sql.append(
                    f"INSERT INTO {table.name} ({table.columns}) OVERRIDING SYSTEM VALUE "
                    f"SELECT {table.columns} FROM {SCHEMA}.t{oid};"
                )
            for oid in undone:
                sql += self.tables[oid].undo(oid)
            sql += [self.sequences, "SELECT 'x|' || pg_current_xact_id()::xid;", "COMMIT;"]
        else:
            sql.append(self.sequences)
        # Our own counts are handed in at once, so that the counters read next include them.
        sql += ["SELECT pg_stat_force_next_flush();", _COUNTS]
        rows = psql.run("\n".join(s for s in sql if s))
        self.counts = _counters(rows)
        xid = next((row[2:] for row in rows if row.startswith("x|")), None)
        if xid is not None:
            for oid in emptied:
                self.tables[oid].ours = list(dict.fromkeys(x for x in (self.stamp, xid) if x))
            for oid in undone:
                self.tables[oid].ours.append(xid)
        return xid
