"""Splitting one large database into several objects, dumped and restored in parallel.

Why: the runner parallelises across databases, but a cluster whose data sits
mostly in one database is then bounded by one ``pg_dump`` (one core, one
compression stream) and one ``pg_restore`` without ``-j`` (index and
constraint builds one at a time). ``pg_dump -Fd -j N`` needs a local
directory and ``pg_restore -j N`` a seekable archive; a streamed backup has
neither, so a split database is written as several custom-format archives,
all from one exported snapshot:

* ``<db>.dump`` — the **schema archive**, ``pg_dump -Fc --schema-only``: the
  pre-data and post-data sections, no rows. It is small (a few MB even for
  thousands of objects), which is what lets a restore write it to a local
  file for ``pg_restore -j N --section=post-data`` (parallel index, constraint
  and foreign-key builds need a seekable archive) while still keeping *no
  dump data* on local disk.
* ``<db>.dump.0001`` … — one **data part** per large table
  (``pg_dump -Fc --data-only -t <table>``), largest first, dispatched over N
  workers as ``pg_dump -j N`` dispatches its tables. pg_dump adds the
  ``SEQUENCE SET`` of the sequences the table owns; those values come from
  the same snapshot as the rest's, so restoring them twice, in any order,
  sets the same value.
* ``<db>.dump.0000`` — **the rest** (``pg_dump -Fc --data-only
  --exclude-table-data=<each split table>``): the rows of every other table,
  every sequence value (also those of identity columns, which ``-T`` would
  drop) and the large objects. PostgreSQL 15's pg_restore files large object
  creation (``BLOB``) under pre-data, so a data part is restored without
  ``--section`` (it holds nothing but data entries and large objects).

Which tables get their own part: every ordinary table with at least
:func:`min_part_size` (1/16 of the threshold) bytes, at most
:data:`MAX_PARTS` of them (the largest); the others stay in the rest. A
database is split when the sum of ``pg_total_relation_size`` of its tables is
at least the threshold (:data:`DEFAULT_THRESHOLD`, runner
``--split-threshold``, policy ``spec.dump.parallelDump.thresholdBytes``; 0
never splits). Databases with the ``citus`` extension are never split: a
distributed table's rows come from its shards through the coordinator, in
worker transactions that the exported snapshot does not cover, and its size
on the coordinator (the empty shell) says nothing about them; they keep the
one-archive layout and their Citus-specific restore.

Consistency: the session that exported the snapshot lists the tables in it
and takes ``ACCESS SHARE`` locks on all of them (what ``pg_dump -j``'s leader
does), and stays in its transaction until the last part's pg_dump has ended:
every ``pg_dump --snapshot`` can import the snapshot, and no table can be
dropped or altered between the parts. Row counts are taken in that session
afterwards, in the same snapshot.

Kept free of I/O: the caller passes what the catalog says.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from citus_backup.errors import PermanentError

#: Default size from which a database is split: below it one pg_dump takes
#: seconds to a minute at ~50-100 MB/s of gzip level 1, and more objects and
#: processes would only add start-up costs.
DEFAULT_THRESHOLD = 1024**3
#: A table gets its own part from this fraction of the threshold on (64 MiB
#: by default): smaller tables cost more in pg_dump start-ups (each reads the
#: catalog) than they gain in parallelism, and go into the rest.
MIN_PART_FRACTION = 16
#: At most this many tables get their own part (the largest); the rest of
#: the tables stay in the rest part, so the set keeps a bounded object count.
MAX_PARTS = 256

#: Ordinary tables (partitions included: partitioned parents hold no rows) of
#: the database that pg_dump would dump data of, with their total size (heap,
#: TOAST, indexes: the estimate the issue asks for), read in the snapshot
#: session. Extension members and temporary/system schemas are left out.
TABLES_QUERY = """
SELECT n.nspname, c.relname, c.relkind::text,
       coalesce(pg_total_relation_size(c.oid), 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 4 DESC, 1, 2
"""

#: Foreign keys as (table, referenced leaf table) pairs, a partitioned
#: referenced table expanded to its partitions (``pg_partition_tree`` gives
#: no rows for a plain table, hence the outer join): which parts a
#: ``--table`` restore needs besides the selected tables' (:func:`parts_for_tables`).
FOREIGN_KEYS_QUERY = """
SELECT DISTINCT n1.nspname, c1.relname, n2.nspname, c2.relname
FROM pg_constraint k
JOIN pg_class c1 ON c1.oid = k.conrelid
JOIN pg_namespace n1 ON n1.oid = c1.relnamespace
LEFT JOIN LATERAL (SELECT relid FROM pg_partition_tree(k.confrelid) WHERE isleaf) leaf ON true
JOIN pg_class c2 ON c2.oid = coalesce(leaf.relid, k.confrelid)
JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
WHERE k.contype = 'f'
ORDER BY 1, 2, 3, 4
"""


@dataclass(frozen=True)
class TableSize:
    schema: str
    name: str
    size: int
    #: ``r`` (has rows) or ``p`` (partitioned parent: locked, never a part).
    kind: str = "r"


@dataclass(frozen=True)
class PlannedPart:
    """One data part to dump: ``index`` 0 is the rest (``tables`` empty)."""

    index: int
    tables: tuple[TableSize, ...]
    estimated_size: int

    @property
    def is_rest(self) -> bool:
        return not self.tables


@dataclass(frozen=True)
class SplitPlan:
    total_size: int
    parts: tuple[PlannedPart, ...]  # largest first; the rest is among them

    @property
    def split_tables(self) -> tuple[TableSize, ...]:
        return tuple(t for part in self.parts for t in part.tables)


def min_part_size(threshold: int) -> int:
    return threshold // MIN_PART_FRACTION


def validate_threshold(value: int) -> int:
    if value < 0:
        raise PermanentError(
            f"invalid split threshold {value}: bytes, 0 or more (0: never split)",
            reason="InvalidArgument",
        )
    return value


def plan_split(
    tables: Sequence[TableSize], threshold: int, max_parts: int = MAX_PARTS
) -> SplitPlan | None:
    """The parts of a database of ``tables``, or None to keep one archive.

    None when splitting is off (``threshold`` 0), the database is smaller
    than ``threshold``, or no table is large enough for a part of its own.
    """
    if threshold <= 0:
        return None
    total = sum(t.size for t in tables)
    if total < threshold:
        return None
    floor = min_part_size(threshold)
    candidates = sorted(
        (t for t in tables if t.kind == "r" and t.size >= floor),
        key=lambda t: (-t.size, t.schema, t.name),
    )[:max_parts]
    if not candidates:
        return None
    chosen = {(t.schema, t.name) for t in candidates}
    rest_size = sum(t.size for t in tables if (t.schema, t.name) not in chosen)
    parts = [PlannedPart(index, (table,), table.size) for index, table in enumerate(candidates, 1)]
    parts.append(PlannedPart(0, (), rest_size))
    # Largest first, as pg_dump -j orders its work (ties: by index, stable).
    parts.sort(key=lambda p: (-p.estimated_size, p.index))
    return SplitPlan(total, tuple(parts))


def exact_pattern(*parts: str) -> str:
    """A pg_dump ``-t``/``-n`` pattern matching exactly these names.

    Inside double quotes pattern characters (``*``, ``?``, ``.``, regex
    characters) are literal and ``""`` is a quote.
    """
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def schema_args() -> list[str]:
    """pg_dump arguments of the schema archive."""
    return ["--schema-only"]


def part_args(part: PlannedPart, plan: SplitPlan) -> list[str]:
    """pg_dump arguments selecting the data of ``part``."""
    if part.is_rest:
        return ["--data-only"] + [
            f"--exclude-table-data={exact_pattern(t.schema, t.name)}" for t in plan.split_tables
        ]
    args = ["--data-only"]
    for table in part.tables:
        args += ["-t", exact_pattern(table.schema, table.name)]
    return args


Name = tuple[str, str]


def parts_for_tables(
    parts: Sequence[Sequence[Name]],
    all_tables: Collection[Name],
    tables: Collection[Name],
    schemas: Collection[str],
    foreign_keys: Iterable[tuple[Name, Name]],
) -> list[int]:
    """Which parts (positions in ``parts``, each the tables it holds) a
    ``--table``/``--schema`` restore needs.

    The rest (a part without tables) always: it holds the sequences, the
    large objects and the rows of every table not in a part. Then each part
    holding a table that the restore's temporary copy needs rows of: the
    selected tables (and those of the selected schemas), the rest's tables,
    and, transitively, every table one of them references by a foreign key
    (``(table, referenced)`` pairs): without those rows the foreign keys'
    validation in post-data fails.
    """
    in_parts = {name for part in parts for name in part}
    need = set(tables) | {n for n in all_tables if n[0] in set(schemas)}
    need |= {n for n in all_tables if n not in in_parts}
    references: dict[Name, set[Name]] = {}
    for table, referenced in foreign_keys:
        references.setdefault(table, set()).add(referenced)
    todo = list(need)
    while todo:
        for referenced in references.get(todo.pop(), ()):
            if referenced not in need:
                need.add(referenced)
                todo.append(referenced)
    return [i for i, part in enumerate(parts) if not part or any(n in need for n in part)]
