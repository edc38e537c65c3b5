"""kubectl plugins: ``kubectl create citusrestore`` and ``kubectl create citusbackup``.

Why: ``kubectl create`` has generators for built-in kinds only, so restoring
a database would otherwise mean writing a CitusRestore manifest by hand.
kubectl runs an executable ``kubectl-create-<name>`` found on PATH for
``kubectl create <name>`` (the console scripts ``kubectl-create-citusrestore``
and ``kubectl-create-citusbackup``), passing it the remaining arguments::

    kubectl create citusrestore NAME [--database DB ...] (--backup B | --policy P [--before TIME])
        [--target-database DB] [--table T ... | --schema S ...] [--replace [--keep-old]]
        [--[no-]globals] [--verify [--checks-config-map CM]]
    kubectl create citusbackup NAME --policy P [--tier T] [--also-tier T ...]

both with kubectl's ``-n/--namespace`` (default: the kubeconfig context's
namespace, else ``default``), ``--kubeconfig``, ``--context``,
``--dry-run=none|client|server`` and ``-o yaml|json|name``.

The object is built through the API models (:mod:`citus_backup.api`), so a
bad combination fails here with the same message the CRD's CEL rules give,
before anything is sent. Every error is one line on stderr and exit status 1.
Parsing and building are pure (:func:`build_restore`, :func:`build_backup`,
:func:`render`); :func:`create_object` and the kubeconfig lookup are the only I/O.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from citus_backup.api.backup import KIND_INFO as BACKUP_KIND_INFO
from citus_backup.api.backup import CitusBackupSpec
from citus_backup.api.common import API_VERSION, DNS_SUBDOMAIN_PATTERN, GROUP, VERSION, KindInfo
from citus_backup.api.policy import TIER_ORDER
from citus_backup.api.restore import KIND_INFO as RESTORE_KIND_INFO
from citus_backup.api.restore import CitusRestoreSpec

#: kubectl's fallback when neither ``-n`` nor the kubeconfig context names one.
DEFAULT_NAMESPACE = "default"
#: Object names of custom resources are DNS subdomains (253 characters at most).
NAME_MAX = 253
DRY_RUN_CHOICES = ("none", "client", "server")
OUTPUT_CHOICES = ("yaml", "json", "name")
#: kubectl prints JSON with four-space indentation.
JSON_INDENT = 4

# Spec fields (camelCase, as pydantic reports them) -> the flag that sets them,
# so that a validation error names what the user typed.
FLAG_OF_FIELD = {
    "backupName": "--backup",
    "policyName": "--policy",
    "before": "--before",
    "databases": "--database",
    "targetDatabase": "--target-database",
    "tables": "--table",
    "schemas": "--schema",
    "replace": "--replace",
    "keepOld": "--keep-old",
    "verify": "--verify",
    "checksConfigMap": "--checks-config-map",
    "globals": "--globals",
    "tier": "--tier",
    "alsoTiers": "--also-tier",
}


class PluginError(Exception):
    """Bad input or a failed request: the one-line message to print."""


@dataclass(frozen=True)
class Request:
    """What the command line asks for, after building and validating the object."""

    kind: KindInfo
    body: dict[str, Any]
    namespace: str | None  # from -n; None: the kubeconfig context's
    kubeconfig: str | None
    context: str | None
    dry_run: str
    output: str | None

    @property
    def name(self) -> str:
        name: str = self.body["metadata"]["name"]
        return name

    @property
    def resource(self) -> str:
        """``citusrestore.citusbackup.io/NAME``, as kubectl names created objects."""
        return f"{self.kind.singular}.{GROUP}/{self.name}"


# --------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 1, like kubectl."""

    def error(self, message: str) -> NoReturn:
        raise PluginError(f"{message} (see 'kubectl create {self.prog.split('-')[-1]} --help')")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="name of the object to create")
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    parser.add_argument("--kubeconfig", help="path to the kubeconfig file")
    parser.add_argument("--context", help="kubeconfig context to use")
    parser.add_argument(
        "--dry-run",
        nargs="?",
        const="client",
        default="none",
        choices=DRY_RUN_CHOICES,
        help="client: print the object only; server: have the API server validate it",
    )
    parser.add_argument(
        "-o", "--output", choices=OUTPUT_CHOICES, help="print the object as yaml, json or name"
    )


def restore_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kubectl-create-citusrestore",
        description="Create a CitusRestore: restore databases (or tables or schemas of one) "
        "from a CitusBackup or from the latest successful backup of a CitusBackupPolicy.",
    )
    _common_flags(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--backup", help="restore this CitusBackup")
    source.add_argument("--policy", help="restore the latest successful backup of this policy")
    parser.add_argument(
        "--before", metavar="TIME", help="with --policy: latest backup completed before (RFC 3339)"
    )
    parser.add_argument(
        "--database",
        action="append",
        default=[],
        help="database to restore (repeatable); none: every database of the backup",
    )
    parser.add_argument("--target-database", help="restore the one --database under this name")
    parser.add_argument(
        "--table", action="append", default=[], help="restore only this table (repeatable)"
    )
    parser.add_argument(
        "--schema", action="append", default=[], help="restore only this schema (repeatable)"
    )
    parser.add_argument("--replace", action="store_true", help="drop and recreate the target first")
    parser.add_argument(
        "--keep-old",
        action="store_true",
        help="with --replace: keep the replaced database as <name>_old_<backup id>",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="verification: restore into scratch databases, check row counts (and checks), "
        "drop them; touches no real database",
    )
    parser.add_argument(
        "--checks-config-map",
        metavar="NAME",
        help="with --verify: ConfigMap of <database>.<check>.sql queries that must return true",
    )
    parser.add_argument(
        "--globals",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also restore roles (default: only for a full restore)",
    )
    return parser


def backup_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kubectl-create-citusbackup",
        description="Create a CitusBackup: back up a CitusBackupPolicy's databases now.",
    )
    _common_flags(parser)
    parser.add_argument("--policy", required=True, help="the CitusBackupPolicy to back up")
    tiers = [str(t) for t in TIER_ORDER]
    parser.add_argument("--tier", choices=tiers, help="tier (default: the policy's base tier)")
    parser.add_argument(
        "--also-tier", action="append", default=[], choices=tiers, help="also store in this tier"
    )
    return parser


# --------------------------------------------------------------------------- building


def _validation_message(kind: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            # The regex itself tells a user little; these are object names.
            message = "must be a lowercase RFC 1123 name (a-z, 0-9, '-')"
        fields = [to_camel(part) for part in item["loc"] if isinstance(part, str)]
        where = FLAG_OF_FIELD.get(fields[0], fields[0]) if fields else ""
        value = item.get("input")
        if where and not isinstance(value, dict):
            parts.append(f"{where} {json.dumps(value, default=str)}: {message}")
        else:
            parts.append(message)
    return f"invalid {kind}: " + "; ".join(parts)


def _check_name(kind: str, name: str) -> None:
    if len(name) > NAME_MAX or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name):
        raise PluginError(
            f"invalid {kind} name {name!r}: must be a lowercase RFC 1123 subdomain "
            f"(a-z, 0-9, '-', '.'; at most {NAME_MAX} characters)"
        )


def _body(kind: KindInfo, args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": args.name}
    if args.namespace:
        # Like kubectl: the namespace is in the printed object only when given.
        metadata["namespace"] = args.namespace
    return {"apiVersion": API_VERSION, "kind": kind.kind, "metadata": metadata, "spec": spec}


def _request(kind: KindInfo, args: argparse.Namespace, spec: dict[str, Any]) -> Request:
    return Request(
        kind=kind,
        body=_body(kind, args, spec),
        namespace=args.namespace or None,
        kubeconfig=args.kubeconfig,
        context=args.context,
        dry_run=args.dry_run,
        output=args.output,
    )


def build_restore(argv: Sequence[str]) -> Request:
    """Parse ``kubectl create citusrestore`` arguments into a validated request."""
    args = restore_parser().parse_args(list(argv))
    kind = RESTORE_KIND_INFO.kind
    _check_name(kind, args.name)
    fields: dict[str, Any] = {
        "backup_name": args.backup,
        "policy_name": args.policy,
        "before": args.before,
        "databases": tuple(args.database) or None,
        "target_database": args.target_database,
        "tables": tuple(args.table) or None,
        "schemas": tuple(args.schema) or None,
        "replace": True if args.replace else None,
        "keep_old": True if args.keep_old else None,
        "verify": True if args.verify else None,
        "checks_config_map": args.checks_config_map,
        "globals": args.globals,
    }
    try:
        spec = CitusRestoreSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise PluginError(_validation_message(kind, exc)) from None
    return _request(RESTORE_KIND_INFO, args, spec.model_dump(mode="json", exclude_unset=True))


def build_backup(argv: Sequence[str]) -> Request:
    """Parse ``kubectl create citusbackup`` arguments into a validated request."""
    args = backup_parser().parse_args(list(argv))
    kind = BACKUP_KIND_INFO.kind
    _check_name(kind, args.name)
    fields: dict[str, Any] = {
        "policy_name": args.policy,
        "tier": args.tier,
        "also_tiers": tuple(args.also_tier) or None,
    }
    try:
        spec = CitusBackupSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise PluginError(_validation_message(kind, exc)) from None
    return _request(BACKUP_KIND_INFO, args, spec.model_dump(mode="json", exclude_unset=True))


def render(request: Request, obj: dict[str, Any]) -> str:
    """What kubectl prints for ``obj`` with ``-o`` (or the "created" line without it)."""
    if request.output == "yaml":
        return yaml.safe_dump(obj, sort_keys=False)
    if request.output == "json":
        return json.dumps(obj, indent=JSON_INDENT) + "\n"
    if request.output == "name":
        return request.resource + "\n"
    suffix = {"client": " (dry run)", "server": " (server dry run)"}.get(request.dry_run, "")
    return f"{request.resource} created{suffix}\n"


def api_error_message(status: int, reason: str, body: str) -> str:
    """kubectl's ``Error from server (Reason): message``, on one line."""
    message = ""
    try:
        decoded = json.loads(body)
    except (TypeError, ValueError):
        decoded = None
    if isinstance(decoded, dict):
        message = str(decoded.get("message") or "")
        reason = str(decoded.get("reason") or reason)
    if not message:
        message = body.strip() if isinstance(body, str) and body.strip() else f"HTTP {status}"
    return f"Error from server ({reason or status}): {' '.join(message.split())}"


# --------------------------------------------------------------------------- I/O


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The kubeconfig context's namespace, else ``default`` (as kubectl resolves ``-n``)."""
    from kubernetes.config import ConfigException, list_kube_config_contexts  # noqa: PLC0415

    try:
        contexts, active = list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    except (ConfigException, OSError):
        if kubeconfig is not None or context is not None:
            raise
        return DEFAULT_NAMESPACE  # no kubeconfig at all: kubectl's default
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), None)
        if chosen is None:
            raise PluginError(f'context "{context}" does not exist')
    namespace = (chosen or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else DEFAULT_NAMESPACE


def create_object(request: Request, namespace: str) -> dict[str, Any]:
    """Create (or server-side dry-run) the object; the API server's answer."""
    from kubernetes import client, config  # noqa: PLC0415

    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=request.kubeconfig, context=request.context
    )
    try:
        api = client.CustomObjectsApi(api_client)
        body = dict(request.body, metadata=dict(request.body["metadata"], namespace=namespace))
        created = api.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            request.kind.plural,
            body,
            dry_run="All" if request.dry_run == "server" else None,
        )
        if not isinstance(created, dict):
            raise PluginError(f"unexpected answer from the API server: {created!r}")
        return created
    finally:
        api_client.close()


def run(
    build: Callable[[Sequence[str]], Request],
    argv: Sequence[str],
    *,
    create: Callable[[Request, str], dict[str, Any]] = create_object,
) -> int:
    """Build, then print (client dry run) or create; errors are one line on stderr."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415
    from kubernetes.config import ConfigException  # noqa: PLC0415
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    try:
        request = build(argv)
        if request.dry_run == "client":
            sys.stdout.write(render(request, request.body))
            return 0
        namespace = request.namespace or default_namespace(request.kubeconfig, request.context)
        created = create(request, namespace)
        sys.stdout.write(render(request, created))
        return 0
    except PluginError as exc:
        message = f"error: {exc}"
    except ApiException as exc:
        message = api_error_message(exc.status, str(exc.reason or ""), str(exc.body or ""))
    except (ConfigException, OSError) as exc:
        message = f"error: kubeconfig: {' '.join(str(exc).split())}"
    except HTTPError as exc:
        message = f"error: cannot reach the API server: {' '.join(str(exc).split())}"
    sys.stderr.write(message + "\n")
    return 1


def create_citusrestore(argv: Sequence[str] | None = None) -> int:
    """Console script ``kubectl-create-citusrestore``."""
    return run(build_restore, sys.argv[1:] if argv is None else argv)


def create_citusbackup(argv: Sequence[str] | None = None) -> int:
    """Console script ``kubectl-create-citusbackup``."""
    return run(build_backup, sys.argv[1:] if argv is None else argv)
