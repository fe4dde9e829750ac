"""One PostgreSQL database put back as seeded table by table, in place, from copies of its rows
taken after the seed.

Measured on fuse-overlayfs (PostgreSQL 15): cloning a database of 10,000 seeded rows from a
template takes 100-300 ms of the engine's disk (and a drop 130 ms more), a cost that tests shorter
than it wait for; emptying a table of 10,000 rows and copying them back, 30 ms; undoing only the
rows a test wrote, a few. Which tables changed, and how, comes from the server's own counters of
rows inserted, updated and deleted, read after the connections of the database have ended (a
backend hands its counts in as it exits). In a table with a primary key, the rows a test wrote
are those that no restore of ours wrote (their ``xmin``); they go, and the seed's rows missing by
key come back (each step only where the counters say it can be needed: at 10,000 rows the
bringing back costs 1.5 ms; the rows a test only inserted are looked for where the table ended,
0.15 ms at any size). The whole restore is one statement, the server's
``_dockapp_seed.restore(plan)``: 2-3 ms after a test that inserted a row.
Other tables are emptied and filled again. A change of the schema (``CREATE``, ``ALTER``, ``DROP``,
``REFRESH``, noticed by an event trigger) cannot be undone row by row: the caller swaps a whole
clone in instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_dockapp.core.errors import DockappError

if TYPE_CHECKING:
    from pytest_dockapp.services.state.session import Sql

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
# One statement, with the schema-change flag: each statement costs a turn between psql and the
# server (0.15-0.3 ms here).
# The server's restore() compares what these two expressions give with what the last restore
# read through _COUNTING: one text each, written once, for both.
_COUNTERS = (
    "concat_ws(',', pg_stat_get_tuples_inserted({r}), pg_stat_get_tuples_updated({r}), "
    "pg_stat_get_tuples_deleted({r}), pg_relation_filenode({r}))"
)
_SEQUENCE_VALUES = "coalesce(string_agg(coalesce(pg_sequence_last_value(q)::text, '-'), ',' ORDER BY q), '')"
_COUNTING = (
    f"SELECT 'd|' || count(*) FROM {SCHEMA}.ddl UNION ALL "
    f"SELECT 'n|' || r || '|' || {_COUNTERS.format(r='r')} FROM unnest('{{{{{{tables}}}}}}'::oid[]) r UNION ALL "
    f"SELECT 'n|sequences|' || {_SEQUENCE_VALUES} FROM unnest('{{{{{{sequences}}}}}}'::oid[]) q;"
)
# Where a table's rows end, after a restore: the rows a test then inserts land there or past it,
# unless the free space map points an insert at a page before it (space that deleted or updated
# rows left, once vacuumed). The rows a test only inserted are looked for there first (a few
# pages, 0.1 ms), and in the whole table (a scan: 1.0-1.2 ms at 10,000 rows) only when fewer were
# found there than the counters say came in. A TID range scan: PostgreSQL 14 and later.
_LAST_BLOCK = "greatest(pg_relation_size({r}) / current_setting('block_size')::int - 1, 0)"
# A whole restore in one statement, so one round trip and one transaction (rolled back whole on
# an error): end the connections, read each table's counters, and, for those that moved since
# ``before``, run the statements the plan gives (each table's own; those a table emptied takes
# along first). The copies go in without firing the app's triggers or checking foreign keys
# (replica role: the seed satisfied them), need not reach the disk before the test, and wait at
# most 3 s for a lock. It returns each table's counters as they will be once its own counts are
# in (handed in as the statement ends): those it read, plus the rows it deleted and wrote (a
# TRUNCATE moves no counter, and gives the table a new file). Reading them again in a second
# statement cost a turn between psql and the server and the reading: 0.4-0.5 ms a restore.
# Measured at 10,000 rows: two round trips of two statements each took 2.3-2.7 ms a restore of a
# one-row insert, this one 2.0-2.2 ms (before the counters were returned).
_RESTORE = f"""CREATE FUNCTION {SCHEMA}.restore(plan jsonb) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
  t jsonb; now text; b text[]; n text[]; todo jsonb := '[]'; emptied oid[] := '{{}}';
  seq jsonb := plan->'sequences'; seqs text; counts jsonb := '{{}}'; added bigint; gone bigint;
BEGIN
  PERFORM {SCHEMA}.end_connections();
  IF NOT (plan->>'everything')::boolean AND EXISTS (SELECT 1 FROM {SCHEMA}.ddl) THEN
    RETURN NEXT 'd|1';
    RETURN;
  END IF;
  FOR t IN SELECT jsonb_array_elements(plan->'tables') LOOP
    now := {_COUNTERS.format(r="(t->>'oid')::oid")};
    counts := counts || jsonb_build_object(t->>'oid', now);
    CONTINUE WHEN now = t->>'before';
    b := string_to_array(t->>'before', ',');
    n := string_to_array(now, ',');
    IF b IS NULL OR b[2] <> n[2] OR b[4] <> n[4] THEN  -- updated, or emptied: both ways
      t := t || '{{"out": true, "in": true}}';
    ELSE
      t := t || jsonb_build_object('out', b[1] <> n[1], 'in', b[3] <> n[3]);
    END IF;
    IF t ? 'group' THEN
      emptied := emptied || ARRAY(SELECT jsonb_array_elements_text(t->'group')::oid);
    END IF;
    todo := todo || jsonb_build_array(t);
  END LOOP;
  SELECT {_SEQUENCE_VALUES} INTO seqs FROM jsonb_array_elements_text(seq->'oids') e, LATERAL (SELECT e::oid AS q) x;
  IF jsonb_array_length(todo) > 0 OR seqs IS DISTINCT FROM seq->>'before' THEN
    PERFORM set_config('session_replication_role', 'replica', true), set_config('synchronous_commit', 'off', true),
      set_config('lock_timeout', '3s', true);
    IF cardinality(emptied) > 0 THEN
      EXECUTE 'TRUNCATE ' || (SELECT string_agg('ONLY ' || (x->>'name'), ', ') FROM jsonb_array_elements(plan->'tables')
        x WHERE (x->>'oid')::oid = ANY(emptied));
      FOR t IN SELECT x FROM jsonb_array_elements(plan->'tables') x WHERE (x->>'oid')::oid = ANY(emptied) LOOP
        EXECUTE t->>'fill';
        GET DIAGNOSTICS added = ROW_COUNT;
        n := string_to_array(counts->>(t->>'oid'), ',');
        counts := counts || jsonb_build_object(t->>'oid', concat_ws(',', n[1]::bigint + added, n[2], n[3],
          pg_relation_filenode((t->>'oid')::oid)));
        RETURN NEXT 'e|' || (t->>'oid');
        RETURN NEXT 'w|' || (t->>'oid') || '|' || {_LAST_BLOCK.format(r="(t->>'oid')::oid")};
      END LOOP;
    END IF;
    FOR t IN SELECT x FROM jsonb_array_elements(todo) x WHERE NOT (x->>'oid')::oid = ANY(emptied) LOOP
      added := 0;
      gone := 0;
      n := string_to_array(counts->>(t->>'oid'), ',');
      IF (t->>'out')::boolean AND NOT (t->>'in')::boolean AND t ? 'tail_delete' THEN
        -- rows only came in: first where the table ended, then all of it if some were elsewhere
        EXECUTE t->>'tail_delete';
        GET DIAGNOSTICS gone = ROW_COUNT;
        IF gone < n[1]::bigint - (string_to_array(t->>'before', ','))[1]::bigint THEN
          EXECUTE t->>'delete';
          GET DIAGNOSTICS added = ROW_COUNT;
          gone := gone + added;
          added := 0;
        END IF;
      ELSIF (t->>'out')::boolean THEN
        EXECUTE t->>'delete';
        GET DIAGNOSTICS gone = ROW_COUNT;
      END IF;
      IF (t->>'in')::boolean THEN EXECUTE t->>'insert'; GET DIAGNOSTICS added = ROW_COUNT; END IF;
      counts := counts || jsonb_build_object(t->>'oid', concat_ws(',', n[1]::bigint + added, n[2],
        n[3]::bigint + gone, n[4]));
      RETURN NEXT 'u|' || (t->>'oid') || '|' || (t->>'in');
      RETURN NEXT 'w|' || (t->>'oid') || '|' || {_LAST_BLOCK.format(r="(t->>'oid')::oid")};
    END LOOP;
    IF seq->>'set' <> '' THEN EXECUTE seq->>'set'; END IF;
    PERFORM pg_stat_force_next_flush();
    RETURN NEXT 'x|' || pg_current_xact_id()::xid;
    SELECT {_SEQUENCE_VALUES} INTO seqs FROM jsonb_array_elements_text(seq->'oids') e, LATERAL (SELECT e::oid AS q) x;
  END IF;
  RETURN QUERY SELECT 'n|' || key || '|' || value FROM jsonb_each_text(counts);
  RETURN NEXT 'n|sequences|' || seqs;
END $$;
"""
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
# reach the statistics as it exits, and the backends' list is read once per transaction unless its
# snapshot is cleared. The test's own connection is often still exiting: measured, a wait of
# 2 ms a turn cost 1.2 ms a restore, one of 0.2 ms 0.5. The list is read through the functions
# under pg_stat_activity, not the view: the view computes some thirty columns of every backend
# and joins two catalogs, and this step took 1.1-1.7 ms a restore through it, 0.2-0.3 without.
_BACKENDS = (
    "FROM pg_stat_get_backend_idset() b WHERE pg_stat_get_backend_dbid(b) = db "
    "AND pg_stat_get_backend_pid(b) <> pg_backend_pid()"
)
_ENDING = (
    "DECLARE db oid := (SELECT oid FROM pg_database WHERE datname = current_database()); "
    f"BEGIN PERFORM pg_terminate_backend(pg_stat_get_backend_pid(b)) {_BACKENDS}; "
    "FOR i IN 1..25000 LOOP PERFORM pg_stat_clear_snapshot(); "
    f"EXIT WHEN NOT EXISTS (SELECT 1 {_BACKENDS}); "
    "PERFORM pg_sleep(0.0002); END LOOP; END"
)
_END_CONNECTIONS = f"DO $$ {_ENDING} $$;"
# The same, compiled once (a DO block is compiled at every call: 0.3 ms here).
# Before the event triggers, which would take them for the app's change of the schema.
_FLAG = (
    f"CREATE FUNCTION {SCHEMA}.end_connections() RETURNS void LANGUAGE plpgsql AS $$ {_ENDING} $$;\n{_RESTORE}{_FLAG}"
)


def _counters(rows: list[str]) -> dict[str, str]:
    """What the counting printed: each table's counters by oid, and the sequences' values."""
    return dict(row[2:].split("|", 1) for row in rows if row.startswith("n|"))


@dataclass
class _Table:
    name: str  # schema-qualified, quoted
    columns: str  # all but the generated ones
    key: str = ""  # the primary key's columns
    ours: list[str] = field(default_factory=list)  # our restores' transactions: the seed's rows carry them
    tail: int | None = None  # the table's last page after the last restore

    def plan(self, oid: str, before: str | None, group: list[str] | None) -> dict[str, object]:
        """What a restore does to this table when its counters moved from ``before``: the rows that
        none of our restores wrote go (where rows came in), the seed's rows missing by key come
        back (where rows went; 1.5 ms at 10,000 rows, the removing 0.5); or, with ``group``, those
        tables are emptied and filled again."""
        key = ", ".join(f"t.{k}" for k in self.key.split(","))
        seed_key = ", ".join(f"s.{k}" for k in self.key.split(","))
        step: dict[str, object] = {
            "oid": oid,
            "name": self.name,
            "before": before,
            "fill": f"INSERT INTO {self.name} ({self.columns}) OVERRIDING SYSTEM VALUE "
            f"SELECT {self.columns} FROM {SCHEMA}.t{oid}",
        }
        if group is not None:
            step["group"] = group
        else:
            mine = f"xmin NOT IN ({', '.join(f'{x!r}::xid' for x in self.ours)})"
            step["delete"] = f"DELETE FROM ONLY {self.name} WHERE {mine}"
            if self.tail is not None:
                step["tail_delete"] = f"DELETE FROM ONLY {self.name} WHERE ctid >= '({self.tail},0)'::tid AND {mine}"
            step["insert"] = (
                f"INSERT INTO {self.name} ({self.columns}) OVERRIDING SYSTEM VALUE SELECT {self.columns} FROM "
                f"{SCHEMA}.t{oid} s WHERE NOT EXISTS (SELECT 1 FROM ONLY {self.name} t WHERE ({key}) = ({seed_key}))"
            )
        return step


_MAX_OURS = 16  # then a table is emptied and filled again, which leaves one transaction to know


@dataclass
class RowCopies:
    """The seed's rows of every table of one database, and what a restore needs to put them back:
    each table's columns (generated ones left out), which tables refer to which (a table emptied
    takes those that refer to it along), and the sequences' values."""

    tables: dict[str, _Table] = field(default_factory=dict)  # by oid
    referrers: dict[str, set[str]] = field(default_factory=dict)  # oid: the oids of tables referring to it
    sequences: str = ""  # one SELECT of setval() calls
    sequence_oids: list[str] = field(default_factory=list)
    counts: dict[str, str] = field(default_factory=dict)  # oid: the server's counters at the last restore
    counted: bool = True  # the server counts writes (track_counts); else every table is put back
    stamp: str = ""  # the transaction of ours whose rows the templates hold

    @classmethod
    def take(cls, psql: Sql) -> RowCopies:
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
                copies.sequences = f"SELECT {parts[0]}"
            elif kind == "q":
                copies.sequence_oids = [q for q in parts[0].split(",") if q]
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
        copies.stamp = copies.put_back(psql) or ""
        return copies

    @property
    def counting(self) -> str:
        """The query of the schema-change flag, every table's counters and every sequence's value."""
        return _COUNTING.format(tables=",".join(self.tables), sequences=",".join(self.sequence_oids))

    def _plan(self, everything: bool) -> str:
        """The argument of the server's ``restore()``: each table's counters at the last restore and
        what to run when they moved (with ``everything``, every table as if they had)."""
        groups: dict[str, list[str]] = {}
        for oid, table in self.tables.items():
            if table.key and 0 < len(table.ours) < _MAX_OURS:
                continue
            group, todo = [], [oid]  # emptied with the tables that refer to it
            while todo:
                other = todo.pop()
                if other in self.tables and other not in group:
                    group.append(other)
                    todo += self.referrers.get(other, ())
            groups[oid] = group
        counted = self.counted and not everything
        plan = {
            "everything": everything,
            "tables": [
                table.plan(oid, self.counts.get(oid) if counted else None, groups.get(oid))
                for oid, table in self.tables.items()
            ],
            "sequences": {
                "oids": self.sequence_oids,
                "before": self.counts.get("sequences") if counted else None,
                "set": self.sequences,
            },
        }
        return "'" + json.dumps(plan).replace("'", "''") + "'"

    def restore(self, psql: Sql) -> bool:
        """Put back the tables and sequences changed since the last restore (one round trip);
        False (nothing done) when the schema changed, which only a clone of the whole database
        undoes. A connection that opens meanwhile and holds a lock makes it wait at most 3 s; then
        the connections are ended again, twice at most."""
        for attempt in range(3):
            try:
                return self._run(psql, everything=False) is not False
            except DockappError as exc:  # the transaction was rolled back: nothing is half done
                if "lock timeout" not in (exc.evidence or "") or attempt == 2:
                    raise
        return True

    def put_back(self, psql: Sql) -> str | None:
        """Put back every table and sequence, whatever was done to them; the transaction that wrote."""
        xid = self._run(psql, everything=True)  # the schema-change flag is not read: never False
        return xid if isinstance(xid, str) and xid else None

    def recount(self, psql: Sql) -> None:
        """Note the counters as they are now (a clone swapped in starts its own at zero)."""
        self.counts = _counters(psql.run(self.counting))

    def _run(self, psql: Sql, everything: bool) -> str | bool:
        """One restore on the server, and the counters after it; False when the schema changed,
        else the transaction that wrote ("" when nothing was written)."""
        rows = psql.run(f"SELECT {SCHEMA}.restore({self._plan(everything)}::jsonb);")
        if "d|1" in rows:
            return False
        self.counts = _counters(rows)
        xid = next((row[2:] for row in rows if row.startswith("x|")), "")
        for row in rows:
            kind, _, rest = row.partition("|")
            if kind == "e":  # emptied and filled: only the seed's transaction and this one's rows
                self.tables[rest].ours = list(dict.fromkeys(x for x in (self.stamp, xid) if x))
            elif kind == "u" and rest.endswith("|true"):  # rows of ours only where the seed's came back
                self.tables[rest.split("|")[0]].ours.append(xid)
            elif kind == "w":
                oid, _, block = rest.partition("|")
                self.tables[oid].tail = int(block)
        return xid
