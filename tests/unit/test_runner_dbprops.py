"""SQL that recreates database properties: composed, never string-formatted."""

from __future__ import annotations

import pytest

from citus_backup.runner.dbprops import (
    create_database,
    parse_setting,
    post_restore_statements,
    split_guc_list,
)
from citus_backup.runner.manifest import AclItem, DatabaseProperties, RoleSetting

PROPS = DatabaseProperties(owner='app "owner"', encoding="UTF8", collate="C.UTF-8", ctype="C.UTF-8")


def test_create_database_quotes_names_and_values() -> None:
    sql = create_database('tmp"; DROP DATABASE x; --', PROPS, 'app "owner"').as_string()
    assert sql == (
        'CREATE DATABASE "tmp""; DROP DATABASE x; --" WITH TEMPLATE = template0 ENCODING = '
        "'UTF8' LC_COLLATE = 'C.UTF-8' LC_CTYPE = 'C.UTF-8' OWNER = \"app \"\"owner\"\"\""
    )


def test_create_database_with_icu_and_tablespace() -> None:
    props = PROPS.model_copy(
        update={"locale_provider": "icu", "icu_locale": "de-DE", "tablespace": "fast"}
    )
    sql = create_database("d", props, None).as_string()
    assert "LOCALE_PROVIDER = icu ICU_LOCALE = 'de-DE'" in sql
    assert 'TABLESPACE = "fast"' in sql
    assert "OWNER" not in sql


def test_guc_lists_are_split_like_postgres() -> None:
    assert split_guc_list('"$user", public') == ["$user", "public"]
    assert split_guc_list('a,"b,c" , "d""e"') == ["a", "b,c", 'd"e']
    assert split_guc_list("") == []


def test_parse_setting() -> None:
    assert parse_setting("work_mem=64MB") == ("work_mem", "64MB")
    assert parse_setting("x.y=a=b") == ("x.y", "a=b")
    with pytest.raises(ValueError, match="malformed"):
        parse_setting("nothing")


def test_post_restore_statements() -> None:
    props = PROPS.model_copy(
        update={
            "connection_limit": 5,
            "settings": ('search_path="$user", public', "work_mem=64MB", "citus.shard_count=8"),
            "role_settings": (RoleSetting(role="reader", settings=("statement_timeout=5s",)),),
            "acl": (
                AclItem(grantee=None, privilege="CONNECT"),
                AclItem(grantee="reader", privilege="TEMPORARY", grantable=True),
            ),
            "comment": "it's ours",
        }
    )
    rendered = [
        s.as_string() for s in post_restore_statements("db", props, owner=None, privileges=True)
    ]
    assert rendered == [
        'ALTER DATABASE "db" WITH CONNECTION LIMIT = 5',
        "ALTER DATABASE \"db\" SET \"search_path\" TO '$user', 'public'",
        'ALTER DATABASE "db" SET "work_mem" TO \'64MB\'',
        'ALTER DATABASE "db" SET "citus"."shard_count" TO \'8\'',
        'ALTER ROLE "reader" IN DATABASE "db" SET "statement_timeout" TO \'5s\'',
        'REVOKE ALL ON DATABASE "db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "db" FROM "app ""owner"""',
        'GRANT CONNECT ON DATABASE "db" TO PUBLIC',
        'GRANT TEMPORARY ON DATABASE "db" TO "reader" WITH GRANT OPTION',
        "COMMENT ON DATABASE \"db\" IS 'it''s ours'",
    ]
    without_acl = post_restore_statements("db", props, owner="other", privileges=False)
    assert not any("GRANT" in s.as_string() for s in without_acl)


def test_defaults_need_no_statements() -> None:
    assert post_restore_statements("db", PROPS, owner=None, privileges=True) == []


def test_unknown_privilege_is_refused() -> None:
    props = PROPS.model_copy(update={"acl": (AclItem(grantee=None, privilege="DROP"),)})
    with pytest.raises(ValueError, match="privilege"):
        post_restore_statements("db", props, owner=None, privileges=True)
