"""The backup/restore/list subcommands: flags, summary line, termination log."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from citus_backup import cli
from citus_backup.errors import PermanentError
from citus_backup.runner import cli as runner_cli
from citus_backup.runner.summary import RunSummary


def parser() -> argparse.ArgumentParser:
    return cli.build_parser()


def test_subcommands_are_registered() -> None:
    args = parser().parse_args(["backup", "--also-tier", "monthly", "--also-tier", "yearly"])
    assert args.command == "backup"
    assert args.also_tier == ["monthly", "yearly"]
    assert args.compress == "1"
    assert args.part_size == 8 * 1024 * 1024
    args = parser().parse_args(
        ["restore", "--latest", "--database", "app1", "--table", "public.t", "--table", "s.u"]
    )
    assert (args.latest, args.database, args.table) == (True, ["app1"], ["public.t", "s.u"])
    assert parser().parse_args(["list", "-o", "json"]).output == "json"


def test_no_secret_is_a_flag() -> None:
    for command in ("backup", "restore", "list"):
        sub = parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        flags = {flag for action in sub._actions for flag in action.option_strings}
        secret = {f for f in flags if any(w in f for w in ("password", "secret", "key"))}
        assert secret <= {"--no-role-passwords"}


def test_restore_needs_exactly_one_source() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["restore", "--database", "x"])
    with pytest.raises(SystemExit):
        parser().parse_args(["restore", "--latest", "--backup-id", "x"])
    with pytest.raises(SystemExit):
        parser().parse_args(["restore", "--latest", "--table", "a.b", "--schema", "c"])


def test_part_size_is_validated() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["backup", "--part-size", "4"])
    assert parser().parse_args(["backup", "--part-size", "16"]).part_size == 16 * 1024 * 1024


def test_run_command_prints_summary_and_writes_termination_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    args = argparse.Namespace(termination_log=str(log))

    def fails(summary: RunSummary) -> None:
        summary.backup_id = "20261127T030000Z"
        raise PermanentError(
            "S3 check bucket s3://b: bucket does not exist", reason="BucketNotFound"
        )

    assert runner_cli.run_command("backup", args, fails) == 1
    out, err = capsys.readouterr()
    line = json.loads(out.strip())
    assert line["status"] == "failed"
    assert line["reason"] == "BucketNotFound"
    assert line["backupId"] == "20261127T030000Z"
    assert "bucket does not exist" in err
    assert json.loads(log.read_bytes()) == line

    def works(summary: RunSummary) -> None:
        summary.databases = {"app1": 1}

    assert runner_cli.run_command("backup", args, works) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"


def test_termination_log_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "from-env"
    monkeypatch.setenv("CITUS_BACKUP_TERMINATION_LOG", str(log))
    args = argparse.Namespace(termination_log=None)
    assert runner_cli.run_command("backup", args, lambda summary: None) == 0
    assert json.loads(log.read_bytes())["status"] == "succeeded"
    capsys.readouterr()


def test_unexpected_errors_are_reported_too(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(termination_log=None)

    def bug(summary: RunSummary) -> None:
        raise RuntimeError("boom\nsecond line")

    assert runner_cli.run_command("restore", args, bug) == 1
    line = json.loads(capsys.readouterr().out)
    assert line["reason"] == "InternalError"
    assert line["error"] == "unexpected error: RuntimeError: boom second line"


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_command_table_matches_what_the_modules_register() -> None:
    """``citus-backup <command>`` imports only cli.COMMANDS[command]: keep it exact."""
    assert _choices(parser()) == set(cli.COMMANDS)
    for command in cli.COMMANDS:
        assert command in _choices(cli.build_parser([command]))
    # Top-level help, options first or an unknown command: every module.
    for argv in ([], ["--help"], ["no-such-command"]):
        assert _choices(cli.build_parser(argv)) == set(cli.COMMANDS)


def test_backup_does_not_import_what_it_needs_only_after_its_first_pg_dump() -> None:
    """The minio SDK, the pydantic models and other commands' modules are
    imported lazily: ~0.2 s that the first pg_dump of a backup must not wait for."""
    code = (
        "import sys, json\n"
        "from citus_backup import cli\n"
        "cli.build_parser(['backup']).parse_args(['backup'])\n"
        "import citus_backup.runner.backup\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stdout))
    heavy = {
        "minio",
        "urllib3",
        "pydantic",
        "yaml",
        "kopf",
        "kubernetes",
        "citus_backup.runner.manifest",
        "citus_backup.runner.s3",
        "citus_backup.runner.toc",
        "citus_backup.runner.restore",
        "citus_backup.runner.listing",
        "citus_backup.runner.protect",
        "citus_backup.api.crdgen",
        "citus_backup.operator_main",
    }
    assert loaded & heavy == set()
    assert "psycopg" in loaded  # needed for the catalog query before the first pg_dump


@pytest.mark.parametrize("piped", [True, False])
def test_job_commands_exit_quickly_with_their_output_flushed(piped: bool, tmp_path: Path) -> None:
    """`backup` ends with os._exit (no interpreter teardown): the summary on
    stdout, the log on stderr and the exit code must all survive it, whether
    the streams are pipes or files."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    argv = [sys.executable, "-m", "citus_backup.cli", "backup"]
    if piped:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        out, err = proc.stdout, proc.stderr
    else:
        with (tmp_path / "out").open("w") as stdout, (tmp_path / "err").open("w") as stderr:
            proc = subprocess.run(argv, env=env, stdout=stdout, stderr=stderr, check=False)
        out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert proc.returncode == 1
    assert json.loads(out.strip().splitlines()[-1])["reason"] == "InvalidConfiguration"
    assert "backup failed: S3 endpoint not set" in err
