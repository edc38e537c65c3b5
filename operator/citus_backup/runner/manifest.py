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
    """One row of Citus' ``citus_tables`` view."""

    table_name: str
    citus_table_type: str
    distribution_column: str | None = None
    colocation_id: int | None = None
    shard_count: int | None = None


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
    version: str
    tables: tuple[CitusTable, ...] = ()
    nodes: tuple[CitusNode, ...] = ()


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


class DatabaseEntry(_Model):
    name: str
    object: ObjectInfo
    properties: DatabaseProperties
    toc: TocSummary
    extensions: tuple[Extension, ...] = ()
    citus: CitusMetadata | None = None
    started_at: datetime
    finished_at: datetime


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
    globals: ObjectInfo | None = None
    databases: tuple[DatabaseEntry, ...] = ()

    def database(self, name: str) -> DatabaseEntry | None:
        for entry in self.databases:
            if entry.name == name:
                return entry
        return None

    @property
    def total_size(self) -> int:
        size = sum(entry.object.size for entry in self.databases)
        return size + (self.globals.size if self.globals else 0)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)
