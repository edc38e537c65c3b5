"""SQL that recreates a database's own properties, composed without I/O.

A restore goes into a temporary database that ``restore`` creates itself
(``pg_restore --create`` would create it under its original name, which is
exactly what an atomic swap must avoid), so what pg_dump keeps outside the
archive's objects — owner, encoding, locale, connection limit,
``ALTER DATABASE ... SET``, ``ALTER ROLE ... IN DATABASE ... SET``, database
privileges and comment — is recorded in the manifest at backup time and
replayed here.

Every name goes through :class:`psycopg.sql.Identifier` and every value through
:class:`psycopg.sql.Literal`: nothing is string-formatted into SQL.
"""

from __future__ import annotations

from psycopg import sql

from citus_backup.runner.manifest import AclItem, DatabaseProperties

#: Settings whose value is a list of separately quoted items (pg_dump's
#: GUC_LIST_QUOTE variables); their stored text ``"$user", public`` must be
#: split, or the whole text would become one item.
LIST_SETTINGS = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "session_preload_libraries",
        "shared_preload_libraries",
        "local_preload_libraries",
    }
)
_PRIVILEGES = frozenset({"CREATE", "TEMPORARY", "CONNECT"})


def split_guc_list(value: str) -> list[str]:
    """``'"$user", public'`` -> ``['$user', 'public']`` (SplitGUCList's rules)."""
    items: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            i += 1
            item = []
            while i < n:
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        item.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                item.append(value[i])
                i += 1
            items.append("".join(item))
        else:
            start = i
            while i < n and value[i] != ",":
                i += 1
            items.append(value[start:i].strip())
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == ",":
            i += 1
    return items


def _setting_name(name: str) -> sql.Composable:
    # "citus.shard_count" is var_name '.' ColId: quote each part.
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def setting_value(name: str, value: str) -> sql.Composable:
    if name.lower() in LIST_SETTINGS:
        items = split_guc_list(value)
        if items:
            return sql.SQL(", ").join(sql.Literal(item) for item in items)
    return sql.Literal(value)


def parse_setting(setting: str) -> tuple[str, str]:
    """``"work_mem=64MB"`` -> ``("work_mem", "64MB")`` (pg_db_role_setting form)."""
    name, sep, value = setting.partition("=")
    if not sep or not name:
        raise ValueError(f"malformed setting {setting!r}")
    return name, value


def create_database(name: str, props: DatabaseProperties, owner: str | None) -> sql.Composed:
    """``CREATE DATABASE`` from template0 with the original encoding and locale."""
    parts: list[sql.Composable] = [
        sql.SQL("CREATE DATABASE {} WITH TEMPLATE = template0 ENCODING = {}").format(
            sql.Identifier(name), sql.Literal(props.encoding)
        ),
        sql.SQL(" LC_COLLATE = {} LC_CTYPE = {}").format(
            sql.Literal(props.collate), sql.Literal(props.ctype)
        ),
    ]
    if props.locale_provider == "icu":
        parts.append(sql.SQL(" LOCALE_PROVIDER = icu"))
        if props.icu_locale:
            parts.append(sql.SQL(" ICU_LOCALE = {}").format(sql.Literal(props.icu_locale)))
    if owner:
        parts.append(sql.SQL(" OWNER = {}").format(sql.Identifier(owner)))
    if props.tablespace and props.tablespace != "pg_default":
        parts.append(sql.SQL(" TABLESPACE = {}").format(sql.Identifier(props.tablespace)))
    return sql.Composed(parts)


def acl_statements(name: str, owner: str, acl: tuple[AclItem, ...]) -> list[sql.Composed]:
    """Replace the default database privileges by ``acl`` (datacl semantics)."""
    db = sql.Identifier(name)
    statements = [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, sql.Identifier(owner)),
    ]
    for item in acl:
        privilege = item.privilege.upper()
        if privilege not in _PRIVILEGES:
            raise ValueError(f"unknown database privilege {item.privilege!r}")
        grantee = sql.SQL("PUBLIC") if item.grantee is None else sql.Identifier(item.grantee)
        statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(sql.SQL(privilege), db, grantee)
        if item.grantable:
            statement = statement + sql.SQL(" WITH GRANT OPTION")
        statements.append(statement)
    return statements


def post_restore_statements(
    name: str, props: DatabaseProperties, *, owner: str | None, privileges: bool
) -> list[sql.Composed]:
    """Properties applied after pg_restore (a ``CONNECTION LIMIT 0`` or
    ``default_transaction_read_only`` applied earlier would break the restore)."""
    db = sql.Identifier(name)
    statements: list[sql.Composed] = []
    if props.connection_limit != -1:
        statements.append(
            sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT = {}").format(
                db, sql.Literal(props.connection_limit)
            )
        )
    for setting in props.settings:
        key, value = parse_setting(setting)
        statements.append(
            sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
                db, _setting_name(key), setting_value(key, value)
            )
        )
    for role_setting in props.role_settings:
        for setting in role_setting.settings:
            key, value = parse_setting(setting)
            statements.append(
                sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} TO {}").format(
                    sql.Identifier(role_setting.role),
                    db,
                    _setting_name(key),
                    setting_value(key, value),
                )
            )
    if privileges and props.acl is not None:
        statements.extend(acl_statements(name, owner or props.owner, props.acl))
    if props.comment is not None:
        statements.append(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(props.comment))
        )
    return statements
