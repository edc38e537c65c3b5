"""``citus-backup``: one console script for every role the project plays.

The same image runs the operator (``citus-backup operator``) and the Jobs it
creates (``citus-backup backup`` / ``restore``), so both are subcommands of one
entry point. Each subcommand lives in its own module exposing
``register(subparsers)``; modules keep heavy imports (kopf, the Kubernetes
client) inside functions so that the runner in a Job pod starts fast.
"""

from __future__ import annotations

import argparse
import importlib
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citus-backup",
        description="Back up a Citus (PostgreSQL) cluster into S3/MinIO and restore it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
