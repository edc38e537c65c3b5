"""Kubernetes Events through kopf's event poster (:class:`~citus_backup.reconcile.ports.EventSink`).

kopf batches and posts Events asynchronously from any thread (sync handlers
run in its thread pool), with the operator's own identity as the source.
Messages are the reconcilers' one-line messages, which never contain
credentials.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

logger = logging.getLogger(__name__)

#: Kubernetes caps an Event message at 1 KiB; kopf truncates too, but say so.
MAX_MESSAGE = 1000


class KopfEvents:
    """Posts Events with ``kopf.event``; a failure to post never fails a reconcile."""

    def emit(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        meta = body.get("metadata", {})
        # The operator's log of what it did: the same one-line messages as the Events.
        logger.info(
            "%s %s/%s: %s %s: %s",
            body.get("kind"),
            meta.get("namespace"),
            meta.get("name"),
            type_,
            reason,
            message,
        )
        # Outside a running operator there is no event queue: the log line above remains.
        with contextlib.suppress(LookupError):
            kopf.event(dict(body), type=type_, reason=reason, message=message)  # type: ignore[arg-type]
