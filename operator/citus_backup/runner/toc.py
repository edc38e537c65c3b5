"""Summarise ``pg_restore --list`` output for the manifest.

The backup feeds the head of each dump stream to ``pg_restore --list`` while
uploading (the custom format puts its table of contents first), which both
proves the archive is readable by stock pg_restore and gives counts per object
type and the list of tables.

A listing line is ``<dumpId>; <tableoid> <oid> <DESC> <schema> <name> <owner>``
where DESC may have several words (``TABLE DATA``, ``FK CONSTRAINT``) and
names are printed unquoted, so a name with spaces makes the split ambiguous.
DESC is matched against pg_dump's known descriptions (longest first); for
tables, the schema and owner are matched against the schemas and roles that
existed when the dump was taken (the caller passes them) and the name is what
lies in between. Without those hints the first and last words are taken.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable

from citus_backup.runner.manifest import TableRef, TocSummary

# Descriptions pg_dump (12..18) writes into the TOC.
KNOWN_DESCS = (
    "ACCESS METHOD",
    "ACL",
    "AGGREGATE",
    "BLOB",
    "BLOB METADATA",
    "BLOBS",
    "CAST",
    "CHECK CONSTRAINT",
    "COLLATION",
    "COMMENT",
    "CONSTRAINT",
    "CONVERSION",
    "DATABASE",
    "DATABASE PROPERTIES",
    "DEFAULT",
    "DEFAULT ACL",
    "DOMAIN",
    "ENCODING",
    "EVENT TRIGGER",
    "EXTENSION",
    "FK CONSTRAINT",
    "FOREIGN DATA WRAPPER",
    "FOREIGN SERVER",
    "FOREIGN TABLE",
    "FUNCTION",
    "INDEX",
    "INDEX ATTACH",
    "LARGE OBJECT",
    "LARGE OBJECTS",
    "MATERIALIZED VIEW",
    "MATERIALIZED VIEW DATA",
    "OPERATOR",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "POLICY",
    "PROCEDURAL LANGUAGE",
    "PROCEDURE",
    "PUBLICATION",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "ROW SECURITY",
    "RULE",
    "SCHEMA",
    "SEARCHPATH",
    "SECURITY LABEL",
    "SEQUENCE",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "SERVER",
    "SHELL TYPE",
    "STATISTICS",
    "STATISTICS DATA",
    "STDSTRINGS",
    "SUBSCRIPTION",
    "SUBSCRIPTION TABLE",
    "TABLE",
    "TABLE ATTACH",
    "TABLE DATA",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE",
    "TRANSFORM",
    "TRIGGER",
    "TYPE",
    "USER MAPPING",
    "VIEW",
)
_DESCS_LONGEST_FIRST = sorted(KNOWN_DESCS, key=len, reverse=True)
_ENTRY_RE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_HEADER_RE = re.compile(r"^;\s+([^:]+):\s*(.*)$")
_UPPER_WORD_RE = re.compile(r"^[A-Z]+$")
#: Object types whose entries are listed as tables in the summary.
TABLE_DESCS = frozenset({"TABLE", "FOREIGN TABLE"})


def split_desc(rest: str) -> tuple[str, str]:
    """``"TABLE DATA public t postgres"`` -> ``("TABLE DATA", "public t postgres")``."""
    for desc in _DESCS_LONGEST_FIRST:
        if rest == desc:
            return desc, ""
        if rest.startswith(desc + " "):
            return desc, rest[len(desc) + 1 :]
    # Unknown (newer pg_dump): take the leading upper-case words.
    words = rest.split(" ")
    count = 0
    while count < len(words) - 1 and _UPPER_WORD_RE.match(words[count]):
        count += 1
    count = max(count, 1)
    return " ".join(words[:count]), " ".join(words[count:])


def split_schema_name_owner(
    rest: str, schemas: Collection[str] = (), owners: Collection[str] = ()
) -> tuple[str, str, str]:
    """``"public my table postgres"`` -> ``("public", "my table", "postgres")``."""
    candidates: list[tuple[int, str, str, str]] = []
    for schema in set(schemas) | {"-"}:
        if not rest.startswith(schema + " "):
            continue
        tail = rest[len(schema) + 1 :]
        for owner in owners:
            if tail.endswith(" " + owner) and len(tail) > len(owner) + 1:
                name = tail[: -len(owner) - 1]
                candidates.append((len(schema) + len(owner), schema, name, owner))
    if candidates:
        # The most specific (longest) schema and owner match wins.
        _, schema, name, owner = max(candidates)
        return schema, name, owner
    first, _, tail = rest.partition(" ")
    name, _, owner = tail.rpartition(" ")
    if not name:
        return first, owner, ""
    return first, name, owner


class TocParser:
    """Incremental parser: feed lines as ``pg_restore --list`` prints them."""

    def __init__(self, schemas: Collection[str] = (), owners: Collection[str] = ()) -> None:
        self._schemas = frozenset(schemas)
        self._owners = frozenset(owners)
        self._counts: Counter[str] = Counter()
        self._tables: list[TableRef] = []
        self._entries = 0
        self._header: dict[str, str] = {}

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith(";"):
            header = _HEADER_RE.match(line)
            if header:
                self._header[header.group(1).strip()] = header.group(2).strip()
            return
        match = _ENTRY_RE.match(line)
        if not match:
            return
        self._entries += 1
        desc, rest = split_desc(match.group(4))
        self._counts[desc] += 1
        if desc in TABLE_DESCS:
            schema, name, _ = split_schema_name_owner(rest, self._schemas, self._owners)
            self._tables.append(TableRef(schema=schema, name=name))

    def feed_all(self, lines: Iterable[str]) -> TocParser:
        for line in lines:
            self.feed(line)
        return self

    def summary(self) -> TocSummary:
        return TocSummary(
            entries=self._entries,
            counts_by_type=dict(sorted(self._counts.items())),
            tables=tuple(sorted(self._tables, key=lambda t: (t.schema_name, t.name))),
            archive_version=self._header.get("Dump Version"),
            compression=self._header.get("Compression"),
        )


def summarize(
    listing: str, schemas: Collection[str] = (), owners: Collection[str] = ()
) -> TocSummary:
    return TocParser(schemas, owners).feed_all(listing.splitlines()).summary()
