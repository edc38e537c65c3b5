"""The manifest: what a backup set contains, written last as ``manifest.json``.

Its presence is what makes a set complete; its content lets ``restore``
verify every object (size, sha256), recreate each database with its
properties (owner, encoding, locale, settings, privileges), and tells a human
or a later Citus-aware step what was in the dump (table-of-contents summary,
extensions, Citus distribution metadata and worker nodes) without downloading
it.

Models are frozen pydantic v2 models with camelCase aliases, the JSON style of
Kubernetes resources and of the rest of the project. Unknown fields are
ignored when reading, so an older runner can still read a newer manifest.
Object names are relative to the set (``app1.dump``), so the same manifest is
valid in every tier the set is copied to.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

FORMAT_VERSION = 1
#: Manifests with a split database (:attr:`DatabaseEntry.parts`) say 2: a
#: runner that knows version 1 only would restore the schema archive alone.
SPLIT_FORMAT_VERSION = 2
#: The newest format this runner restores.
MAX_FORMAT_VERSION = SPLIT_FORMAT_VERSION


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, populate_by_name=True, alias_generator=to_camel, extra="ignore"
    )


class ObjectInfo(_Model):
    """One object of the set; ``name`` is relative to the set's key prefix."""

    name: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TableRef(_Model):
    schema_name: str = Field(alias="schema")
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"


class TocSummary(_Model):
    """Summary of ``pg_restore --list`` for one dump."""

    entries: int = 0
    counts_by_type: dict[str, int] = Field(default_factory=dict)
    tables: tuple[TableRef, ...] = ()
    archive_version: str | None = None
    compression: str | None = None


class Extension(_Model):
    name: str
    version: str
    schema_name: str = Field(alias="schema")


class CitusTable(_Model):
    """One row of Citus' ``citus_tables`` view.

    ``citus_table_type`` is ``distributed``, ``reference``, ``local`` (a
    Citus-local table) or ``schema`` (a table of a distributed schema).
    ``schema_name``/``relation_name`` are the exact names (``table_name`` is
    the regclass text, which depends on the search_path); manifests written
    before they were recorded lack them.
    """

    table_name: str
    citus_table_type: str
    distribution_column: str | None = None
    colocation_id: int | None = None
    shard_count: int | None = None
    schema_name: str | None = None
    relation_name: str | None = None

    @property
    def names(self) -> tuple[str, str]:
        """(schema, table); from ``table_name`` for older manifests."""
        if self.schema_name is not None and self.relation_name is not None:
            return self.schema_name, self.relation_name
        schema, _, name = self.table_name.rpartition(".")
        return (schema or "public").strip('"'), name.strip('"')


class CitusSchema(_Model):
    """A distributed schema (schema-based sharding, ``citus_schemas``)."""

    schema_name: str
    colocation_id: int


class CitusNode(_Model):
    """One row of ``pg_dist_node``."""

    node_id: int
    group_id: int
    node_name: str
    node_port: int
    node_role: str
    is_active: bool
    should_have_shards: bool


class CitusMetadata(_Model):
    """What a restore needs to rebuild the distribution (see :mod:`.citus`)."""

    version: str
    tables: tuple[CitusTable, ...] = ()
    nodes: tuple[CitusNode, ...] = ()
    schemas: tuple[CitusSchema, ...] = ()
    #: Settings that change how a restore behaves (``citus.*``), as ``SHOW`` gives them.
    settings: dict[str, str] = Field(default_factory=dict)
    #: The full ``citus_version()`` text.
    build: str | None = None

    @property
    def coordinator_in_metadata(self) -> bool:
        return any(node.group_id == 0 for node in self.nodes)


class RowCount(_Model):
    """Rows of one table at backup time. ``exact`` when counted in the snapshot
    the dump used (plain tables) or while distributed writes were blocked;
    otherwise a distributed count taken right after the dump (it can differ
    from the dump by the rows written meanwhile)."""

    schema_name: str = Field(alias="schema")
    name: str
    rows: int = Field(ge=0)
    exact: bool = True


class AclItem(_Model):
    """One database privilege (``aclexplode(datacl)``); grantee None is PUBLIC."""

    grantee: str | None
    privilege: str
    grantable: bool = False


class RoleSetting(_Model):
    """``ALTER ROLE <role> IN DATABASE <db> SET ...`` settings."""

    role: str
    settings: tuple[str, ...]


class DatabaseProperties(_Model):
    """What ``CREATE DATABASE`` and ``ALTER DATABASE`` need to recreate it."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    locale_provider: str = "libc"
    icu_locale: str | None = None
    connection_limit: int = -1
    tablespace: str | None = None
    comment: str | None = None
    #: None means the default privileges (datacl IS NULL).
    acl: tuple[AclItem, ...] | None = None
    settings: tuple[str, ...] = ()
    role_settings: tuple[RoleSetting, ...] = ()


class DataPart(_Model):
    """One data object of a split database (see :mod:`.split`).

    A part is a ``pg_dump -Fc --data-only`` archive taken in the database's
    exported snapshot. ``tables`` are the tables whose rows it holds (one
    table per part, like ``pg_dump -j``'s work items); the part without
    tables is *the rest*: every other table's rows, every sequence value and
    the large objects. ``estimated_size`` is ``pg_total_relation_size`` at
    backup time, the order parts were dumped in (largest first) and are
    restored in.
    """

    object: ObjectInfo
    tables: tuple[TableRef, ...] = ()
    estimated_size: int = Field(0, ge=0)

    @property
    def is_rest(self) -> bool:
        return not self.tables


class ForeignKey(_Model):
    """``table`` has a foreign key to ``references`` (a leaf table)."""

    table: TableRef
    references: TableRef


class DatabaseEntry(_Model):
    name: str
    #: The database's archive: the whole dump, or, when ``parts`` is not
    #: empty, the schema-only archive (pre-data and post-data, no rows).
    object: ObjectInfo
    properties: DatabaseProperties
    toc: TocSummary
    extensions: tuple[Extension, ...] = ()
    citus: CitusMetadata | None = None
    row_counts: tuple[RowCount, ...] = ()
    started_at: datetime
    finished_at: datetime
    #: The data of a split database, largest first; empty: ``object`` is the
    #: whole dump (older manifests have no parts).
    parts: tuple[DataPart, ...] = ()
    #: Of a split database: its foreign keys, for a ``--table`` restore to
    #: know which parts it needs; None: not recorded (every part is read).
    foreign_keys: tuple[ForeignKey, ...] | None = None

    @property
    def split(self) -> bool:
        return bool(self.parts)

    @property
    def objects(self) -> tuple[ObjectInfo, ...]:
        """Every object of this database: the archive, then its parts."""
        return (self.object, *(part.object for part in self.parts))

    @property
    def size(self) -> int:
        return sum(obj.size for obj in self.objects)


class Manifest(_Model):
    format_version: int = FORMAT_VERSION
    backup_id: str
    #: Tier the set was written to; ``tiers`` are all tiers it was meant for.
    tier: str
    tiers: tuple[str, ...]
    started_at: datetime
    finished_at: datetime
    tool_version: str
    server_version: str
    server_version_num: int
    pg_dump_version: str
    compression: str
    #: ``snapshot`` (one coordinator snapshot; shards read in their own worker
    #: transactions) or ``blockWrites`` (writes to Citus tables blocked while
    #: each database was dumped): see docs/citus.md.
    consistency: str = "snapshot"
    globals: ObjectInfo | None = None
    databases: tuple[DatabaseEntry, ...] = ()

    def database(self, name: str) -> DatabaseEntry | None:
        for entry in self.databases:
            if entry.name == name:
                return entry
        return None

    @property
    def total_size(self) -> int:
        size = sum(entry.size for entry in self.databases)
        return size + (self.globals.size if self.globals else 0)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)
