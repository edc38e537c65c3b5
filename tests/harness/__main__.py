"""``python -m harness``: run the local-node TEST DOUBLE as a process (for ``make demo``).

The demo needs Job pods to run, and until the e2e issue brings a real
kubelet this machine has none; this runs :class:`harness.local_node.LocalNode`
against the demo's control plane until SIGTERM/SIGINT. See the module
docstring of :mod:`harness.local_node` for what it does and does not emulate.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from harness.local_node import LocalNode
from localenv.env import DemoState


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True, help="localenv demo state dir")
    parser.add_argument("--namespace", action="append", required=True, help="namespace to serve")
    args = parser.parse_args()
    state = DemoState.load(args.state_dir)
    if state is None:
        parser.error(f"no running local environment recorded in {args.state_dir}")
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node = LocalNode(
        state.kube,
        args.state_dir / "local-node",
        state.log_dir / "local-node",
        namespaces=args.namespace,
    )
    with node:
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
