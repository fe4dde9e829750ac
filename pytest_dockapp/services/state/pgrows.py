"""One PostgreSQL database put back as seeded table by table, in place, from copies of its rows
taken after the seed.

Measured on fuse-overlayfs (PostgreSQL 15): cloning a database of 10,000 seeded rows from a
template takes 100-300 ms of the engine's disk (and a drop 130 ms more), a cost that tests shorter
than it wait for; emptying a table of 10,000 rows and copying them back, 30 ms; undoing only the
rows a test wrote, a few. Which tables changed, and how, comes from the server's own counters of
rows inserted, updated and deleted, read after the connections of the database have ended (a
backend hands its counts in as it exits). In a table with a primary key, the rows a test wrote
are those that no restore of ours wrote (their ``xmin``); they go, and the seed's rows missing by
key come back (each step only where the counters say it can be needed: a test that only inserted
costs a delete, 3 ms a restore in all at 10,000 rows, against 6 for both steps).
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
# Each table's counts of rows inserted, updated and deleted, read straight from the statistics
# functions for the tables we know (the pg_stat_user_tables view computes some twenty columns for
# every table: 0.6 ms here, against 0.2). A TRUNCATE moves no counter: it gives the table a new
# file, though. A sequence's value is on its page at every nextval() (its WAL only every 32nd
# time), so the sequences are compared as values.
_COUNT_TABLE = (
    "SELECT 'n|' || r || '|' || concat_ws(',', pg_stat_get_tuples_inserted(r), pg_stat_get_tuples_updated(r), "
    "pg_stat_get_tuples_deleted(r), pg_relation_filenode(r)) FROM unnest('{{{oids}}}'::oid[]) r;"
)
_COUNT_SEQUENCES = (
    "SELECT 'n|sequences|' || coalesce(string_agg(coalesce(pg_sequence_last_value(q)::text, '-'), ',' "
    "ORDER BY q), '') FROM unnest('{{{oids}}}'::oid[]) q;"
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
CREATE EVENT TRIGGER {SCHEMA}_drop ON sql_drop EXECUTE FUNCTION {SCHEMA}.ddl();
"""
# Ends every other connection of the database and waits until they are gone: a backend's counts
# reach the statistics as it exits, and pg_stat_activity is read once per transaction unless its
# snapshot is cleared. The test's own connection is often still exiting: measured, a wait of
# 2 ms a turn cost 1.2 ms a restore, one of 0.2 ms 0.5.
_ENDING = (
    "BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid(); "
    "FOR i IN 1..25000 LOOP PERFORM pg_stat_clear_snapshot(); EXIT WHEN NOT EXISTS (SELECT 1 FROM "
    "pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()); "
    "PERFORM pg_sleep(0.0002); END LOOP; END"
)
_END_CONNECTIONS = f"DO $$ {_ENDING} $$;"
# The same, compiled once (a DO block is compiled at every call: 0.3 ms here).
# Before the event triggers, which would take it for the app's change of the schema.
_FLAG = f"CREATE FUNCTION {SCHEMA}.end_connections() RETURNS void LANGUAGE plpgsql AS $$ {_ENDING} $$;\n{_FLAG}"


def _counters(rows: list[str]) -> dict[str, str]:
    """What the counting printed: each table's counters by oid, and the sequences' values."""
    return dict(row[2:].split("|", 1) for row in rows if row.startswith("n|"))


Undo = tuple[bool, bool]  # a table's rows a test wrote to delete; the seed's rows it removed to bring back
EVERYTHING: Undo = (True, True)


def _undo(before: str | None, now: str | None) -> Undo | None:
    """What a restore must do to a table whose counters were ``before`` and are ``now`` (None: nothing).
    Inserted rows are deleted; deleted ones brought back; an updated row is both; a table
    emptied (a new file) has only its seed's rows to bring back, and nothing is known without counts."""
    if before == now and before is not None:
        return None
    if before is None or now is None:
        return EVERYTHING
    (ins, upd, dele, node), (ins2, upd2, dele2, node2) = before.split(","), now.split(",")
    if node != node2 or upd != upd2:
        return EVERYTHING
    return ins != ins2, dele != dele2


@dataclass
class _Table:
    name: str  # schema-qualified, quoted
    columns: str  # all but the generated ones
    key: str = ""  # the primary key's columns
    ours: list[str] = field(default_factory=list)  # our restores' transactions: the seed's rows carry them

    def undo(self, oid: str, undo: Undo) -> list[str]:
        """Remove the rows that none of our restores wrote, and bring back the seed's rows missing by
        key, as far as ``undo`` says a test did either (the bringing back costs 1.5 ms at 10,000
        rows, the removing 0.5)."""
        key = ", ".join(f"t.{k}" for k in self.key.split(","))
        seed_key = ", ".join(f"s.{k}" for k in self.key.split(","))
        delete, insert = undo
        return [
            f"DELETE FROM ONLY {self.name} WHERE xmin NOT IN ({', '.join(f'{x!r}::xid' for x in self.ours)});"
            if delete
            else "",
            f"INSERT INTO {self.name} ({self.columns}) OVERRIDING SYSTEM VALUE SELECT {self.columns} "
            f"FROM {SCHEMA}.t{oid} s WHERE NOT EXISTS (SELECT 1 FROM ONLY {self.name} t WHERE ({key}) = ({seed_key}));"
            if insert
            else "",
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
    counting: str = ""  # the query of every table's counters and every sequence's value
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
            "SELECT 'c|' || current_setting('track_counts');\n"
            f"SELECT 'q|' || coalesce(string_agg(c.oid::text, ','), '') FROM pg_class c JOIN pg_namespace n "
            f"ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND n.nspname <> '{SCHEMA}';"
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
            elif kind == "q":
                copies.counting = _COUNT_SEQUENCES.format(oids=parts[0])
        copies.counting = _COUNT_TABLE.format(oids=",".join(copies.tables)) + "\n" + copies.counting
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
        copies.stamp = copies.put_back(psql, copies.everything()) or ""
        return copies

    def everything(self) -> dict[str, Undo]:
        """Every table, to put back whatever was done to it."""
        return dict.fromkeys(self.tables, EVERYTHING)

    def restore(self, psql: SqlSession) -> bool:
        """Put back the tables and sequences changed since the last restore (one round trip when
        nothing was); False (nothing done) when the schema changed, which only a clone of the
        whole database undoes. A connection that opens meanwhile and holds a lock makes it wait
        at most 3 s; then the connections are ended again, twice at most."""
        for attempt in range(3):
            rows = psql.run(
                f"SELECT {SCHEMA}.end_connections();\nSELECT 'd|' || count(*) FROM {SCHEMA}.ddl;\n{self.counting}"
            )
            if "d|0" not in rows:
                return False
            now = _counters(rows) if self.counted else {}
            changed = {oid: undo for oid in self.tables if (undo := _undo(self.counts.get(oid), now.get(oid)))}
            if not changed and now.get("sequences") == self.counts.get("sequences"):
                return True
            try:
                self.put_back(psql, changed)
                return True
            except DockappError as exc:  # the transaction was rolled back: nothing is half done
                if "lock timeout" not in (exc.evidence or "") or attempt == 2:
                    raise
        return True

    def put_back(self, psql: SqlSession, changed: dict[str, Undo]) -> str | None:
        """Undo what was written to ``changed`` as each's :data:`Undo` says (emptied and filled
        again where a table has no primary key, or none or too many of our transactions; those that
        refer to it with it), set
        every sequence as seeded, and note the counters as they are after it. Returns the
        transaction that wrote (None when no table changed)."""
        emptied: set[str] = set()
        todo = [oid for oid in changed if not self.tables[oid].key or not 0 < len(self.tables[oid].ours) < _MAX_OURS]
        while todo:
            oid = todo.pop()
            if oid in self.tables and oid not in emptied:
                emptied.add(oid)
                todo += self.referrers.get(oid, ())
        undone = sorted(set(changed) - emptied)
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
                sql += self.tables[oid].undo(oid, changed[oid])
            sql += [self.sequences, "SELECT 'x|' || pg_current_xact_id()::xid;", "COMMIT;"]
        else:
            sql.append(self.sequences)
        # Our own counts are handed in at once, so that the counters read next include them.
        sql += ["SELECT pg_stat_force_next_flush();", self.counting]
        rows = psql.run("\n".join(s for s in sql if s))
        self.counts = _counters(rows)
        xid = next((row[2:] for row in rows if row.startswith("x|")), None)
        if xid is not None:
            for oid in emptied:
                self.tables[oid].ours = list(dict.fromkeys(x for x in (self.stamp, xid) if x))
            for oid in undone:
                if changed[oid][1]:  # rows of ours only where the seed's came back
                    self.tables[oid].ours.append(xid)
        return xid
