"""``python -m localenv up|down|status|env|check-clean``: the demo environment's CLI.

``make demo`` runs ``up`` (via hack/demo.sh) and ``make demo-down`` runs
``down``; the logic lives in :mod:`localenv.env`. Run it with ``hack`` on
``PYTHONPATH`` (the Makefile does). Progress goes to stderr, so the output of
``env`` can be fed to ``eval`` and that of ``up`` read by a person.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from localenv import env
from localenv.kube import KubeAPIError
from localenv.process import StartError


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # A terminal closing (SIGHUP) or `kill` (SIGTERM) during `up` must still
    # run its cleanup: the servers are detached and would otherwise stay.
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localenv",
        description="Local PostgreSQL, MinIO and Kubernetes control plane for the demo.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=env.DEFAULT_STATE_DIR,
        help=f"where state, data and logs live (default: {env.DEFAULT_STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser(
        "up", parents=[common], help="start everything (idempotent) and say how to reach it"
    )
    sub.add_parser("down", parents=[common], help="stop everything and delete its data")
    sub.add_parser("status", parents=[common], help="say what runs (exit 0 all, 1 some, 3 none)")
    sub.add_parser("env", parents=[common], help='print export lines: eval "$(... env)"')
    sub.add_parser(
        "check-clean",
        parents=[common],
        help="after `down`: fail listing any process, mount, bridge, netns or chain left behind",
    )
    sa = sub.add_parser(
        "sa-kubeconfig",
        parents=[common],
        help="write a kubeconfig for an existing ServiceAccount (TokenRequest) and print its path",
    )
    sa.add_argument("namespace")
    sa.add_argument("name")
    sa.add_argument("--output", "-o", type=Path, default=None, help="kubeconfig path to write")
    img = sub.add_parser(
        "images",
        help="build the e2e images (project + pause) without a registry; optionally import them",
    )
    img.add_argument(
        "--containerd-socket", type=Path, default=None, help="also import into this containerd"
    )
    img.add_argument(
        "--log-dir", type=Path, default=None, help="build logs (default: <cache>/images/logs)"
    )
    return parser


def _images(containerd_socket: Path | None, log_dir: Path | None) -> int:
    from localenv import images  # noqa: PLC0415 - only this command needs it

    built = images.ensure_images(log_dir or images.images_dir() / "logs", containerd_socket)
    print(f"{built.project} {built.project_id}")
    print(f"{built.pause} {built.pause_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "images":
        try:
            return _images(args.containerd_socket, args.log_dir)
        except StartError as exc:
            print(f"localenv: {exc}", file=sys.stderr)
            return 1
    state_dir: Path = args.state_dir.resolve()
    commands: dict[str, Callable[[], int]] = {
        "up": lambda: env.up(state_dir),
        "down": lambda: env.down(state_dir),
        "status": lambda: env.status(state_dir),
        "env": lambda: env.env(state_dir),
        "check-clean": lambda: env.check_clean(state_dir),
        "sa-kubeconfig": lambda: env.sa_kubeconfig(
            state_dir, args.namespace, args.name, args.output
        ),
    }
    if args.command == "up":
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)
    try:
        return commands[args.command]()
    except (StartError, KubeAPIError) as exc:
        print(f"localenv: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("localenv: interrupted; stopped what had been started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
