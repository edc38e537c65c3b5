"""``citus-backup``: one console script for every role the project plays.

The same image runs the operator (``citus-backup operator``) and the Jobs it
creates (``citus-backup backup`` / ``restore``), so both are subcommands of one
entry point. Each subcommand lives in its own module exposing
``register(subparsers)``; modules keep heavy imports (kopf, the Kubernetes
client) inside functions so that the runner in a Job pod starts fast. For the
same reason a command named first on the command line (``citus-backup backup
...``) imports only the module that registers it (:data:`COMMANDS`); top-level
help, an unknown command or a command missing from that table import them all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from citus_backup import __version__

# Modules that contribute subcommands, in help order. Missing modules are
# skipped so that a partial checkout still gives a working CLI.
SUBCOMMAND_MODULES = (
    "citus_backup.runner.cli",  # backup, restore, list
    "citus_backup.operator_main",  # operator
    "citus_backup.api.crdgen",  # crds
    "citus_backup.specs.lifecycle_cli",  # lifecycle-rules
)

#: Command -> the module (of SUBCOMMAND_MODULES) that registers it. Only a
#: shortcut: a command missing here still works (every module is imported);
#: a unit test keeps it in step with what the modules register.
COMMANDS = {
    "backup": "citus_backup.runner.cli",
    "restore": "citus_backup.runner.cli",
    "list": "citus_backup.runner.cli",
    "protect": "citus_backup.runner.cli",
    "operator": "citus_backup.operator_main",
    "crds": "citus_backup.api.crdgen",
    "lifecycle-rules": "citus_backup.specs.lifecycle_cli",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only with the subcommands it can need."""
    command = argv[0] if argv else None
    modules = (COMMANDS[command],) if command in COMMANDS else SUBCOMMAND_MODULES
    parser = argparse.ArgumentParser(
        prog="citus-backup",
        description="Back up a Citus (PostgreSQL) cluster into S3/MinIO and restore it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


#: Commands a Job runs, whose process has nothing left to do once their
#: summary is printed: they skip the interpreter's teardown (~45 ms with the
#: runner's modules loaded, measured; more than a backup's own wind-down).
QUICK_EXIT = frozenset({"backup", "restore", "protect"})


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def console() -> None:
    """The ``citus-backup`` console script: :func:`main`, then exit.

    After a Job command every thread pool is joined, every child reaped and
    the summary written, so the process ends with :func:`os._exit` once the
    logs and standard streams are flushed. Anything else exits normally.
    """
    code = main()
    if sys.argv[1:2] and sys.argv[1] in QUICK_EXIT:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
