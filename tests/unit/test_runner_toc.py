"""Parsing ``pg_restore --list`` output into the manifest's TOC summary."""

from __future__ import annotations

from citus_backup.runner.toc import split_desc, split_schema_name_owner, summarize

# Real output of pg_restore --list (PostgreSQL 15) for a small database.
LISTING = """\
;
; Archive created at 2026-11-27 04:04:06 UTC
;     dbname: app1
;     TOC Entries: 18
;     Compression: -1
;     Dump Version: 1.14-0
;     Format: CUSTOM
;
; Selected TOC Entries:
;
6; 2615 16385 SCHEMA - s2 postgres
217; 1259 16404 TABLE public my table postgres
215; 1259 16386 TABLE public orders postgres
218; 1259 16407 SEQUENCE public sq postgres
219; 1259 16408 VIEW public vv postgres
216; 1259 16394 TABLE s2 items postgres
3361; 0 16404 TABLE DATA public my table postgres
3359; 0 16386 TABLE DATA public orders postgres
3360; 0 16394 TABLE DATA s2 items postgres
3369; 0 0 SEQUENCE SET public sq postgres
3211; 2606 16392 CONSTRAINT public orders orders_pkey postgres
3212; 1259 16393 INDEX public orders_v_idx postgres
3215; 2606 16399 FK CONSTRAINT s2 items items_o_fkey postgres
3364; 0 0 ACL - SCHEMA public pg_database_owner
"""


def test_summary_counts_types_and_lists_tables() -> None:
    summary = summarize(LISTING, schemas={"public", "s2"}, owners={"postgres"})
    assert summary.entries == 14
    assert summary.counts_by_type == {
        "ACL": 1,
        "CONSTRAINT": 1,
        "FK CONSTRAINT": 1,
        "INDEX": 1,
        "SCHEMA": 1,
        "SEQUENCE": 1,
        "SEQUENCE SET": 1,
        "TABLE": 3,
        "TABLE DATA": 3,
        "VIEW": 1,
    }
    assert [t.qualified for t in summary.tables] == ["public.my table", "public.orders", "s2.items"]
    assert summary.archive_version == "1.14-0"
    assert summary.compression == "-1"


def test_multi_word_descriptions_win_over_prefixes() -> None:
    assert split_desc("TABLE DATA public t postgres") == ("TABLE DATA", "public t postgres")
    assert split_desc("MATERIALIZED VIEW DATA s m o") == ("MATERIALIZED VIEW DATA", "s m o")
    assert split_desc("FK CONSTRAINT s t c o") == ("FK CONSTRAINT", "s t c o")
    assert split_desc("ENCODING") == ("ENCODING", "")


def test_unknown_descriptions_take_the_leading_upper_case_words() -> None:
    assert split_desc("BRAND NEW THING public x owner") == ("BRAND NEW THING", "public x owner")


def test_names_with_spaces_use_known_schemas_and_owners() -> None:
    schemas = {"public", "my schema", "my"}
    owners = {"postgres", "app owner"}
    assert split_schema_name_owner("my schema a table app owner", schemas, owners) == (
        "my schema",
        "a table",
        "app owner",
    )
    assert split_schema_name_owner("public t postgres", schemas, owners) == (
        "public",
        "t",
        "postgres",
    )
    # Without hints: first and last words.
    assert split_schema_name_owner("public my table postgres") == ("public", "my table", "postgres")


def test_non_ascii_and_quotes_survive() -> None:
    listing = '10; 1259 1 TABLE Schéma Ünï "q\'t" тест\n'
    summary = summarize(listing, schemas={"Schéma"}, owners={"тест"})
    assert [(t.schema_name, t.name) for t in summary.tables] == [("Schéma", 'Ünï "q\'t"')]


def test_garbage_lines_are_ignored() -> None:
    summary = summarize("hello\n\n;\n12 not an entry\n")
    assert summary.entries == 0
    assert summary.tables == ()
