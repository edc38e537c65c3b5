"""``citus-backup lifecycle-rules -f policy.yaml``: print a policy's S3 lifecycle rules.

Works without a cluster: reads a CitusBackupPolicy manifest (a file or ``-``
for stdin; other documents in the file are skipped) and prints the
``{"Rules": [...]}`` JSON the operator would own in the bucket, e.g. for
``aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration
file://rules.json`` or ``mc ilm import``. Models are imported lazily so that
registering the subcommand costs the runner nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lifecycle-rules",
        help="print the S3 lifecycle rules of a CitusBackupPolicy manifest",
        description="Print, as S3 API JSON, the bucket lifecycle rules the operator manages for "
        "a CitusBackupPolicy. Needs no cluster.",
    )
    parser.add_argument(
        "-f", "--filename", required=True, metavar="FILE", help="policy manifest, - for stdin"
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace for the rule IDs (default: the manifest's, else 'default')",
    )
    parser.add_argument(
        "--name", default=None, help="policy to use when the file holds several policies"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml  # noqa: PLC0415 (lazy: see module doc)
    from pydantic import ValidationError  # noqa: PLC0415

    from citus_backup.api.policy import KIND, CitusBackupPolicy  # noqa: PLC0415
    from citus_backup.specs.lifecycle import build_rules, to_json  # noqa: PLC0415

    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as stream:
                text = stream.read()
        documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args.filename}: {exc}", file=sys.stderr)
        return 2
    policies = [d for d in documents if d.get("kind") == KIND]
    if args.name is not None:
        policies = [d for d in policies if (d.get("metadata") or {}).get("name") == args.name]
    if len(policies) != 1:
        print(
            f"{args.filename}: expected one {KIND}, found {len(policies)}"
            + ("" if args.name else " (select one with --name)"),
            file=sys.stderr,
        )
        return 2
    try:
        policy = CitusBackupPolicy.model_validate(policies[0])
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            print(f"{args.filename}: {where}: {error['msg']}", file=sys.stderr)
        return 2
    namespace = args.namespace or policy.namespace or "default"
    print(to_json(build_rules(policy, namespace)))
    return 0
