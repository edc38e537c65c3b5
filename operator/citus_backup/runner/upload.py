"""Streaming multipart uploads with bounded memory, independent of the S3 SDK.

Why not ``put_object(length=-1)``: it needs one fixed part size for the whole
object, so it either wastes memory on small dumps or cannot hold large ones
within S3's 10,000 parts. :class:`StreamUploader` fills parts of growing size
(:mod:`.partsize`) straight from a pipe into recycled buffers, keeps at most
``max_inflight`` parts uploading while the next one fills, and takes its
buffers from a budget shared by all uploads of a run — so memory is bounded by
``budget x part size`` whatever the size or number of dumps. It completes the
upload only after every part succeeded (and the producer exited 0), and aborts
it otherwise so no invisible half-object is left behind. A stream that ends
inside its first part is sent with one PUT.

It talks to a :class:`MultipartTarget` (:class:`.s3.S3Store`, a fake in the
unit tests, or the backup's gate that holds uploads back until the bucket has
been checked). This module does not import the ``minio`` SDK, so a backup can
start its pg_dumps while the SDK is still being imported.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.runner.partsize import PartLimitExceeded, PartSchedule

log = logging.getLogger("citus_backup.runner")


class Cancelled(TransientError):
    """The run is being stopped (another stream failed, or SIGTERM)."""

    reason = "Cancelled"


class MultipartTarget(Protocol):
    """What :class:`StreamUploader` needs (S3Store, or a fake in tests)."""

    def put_bytes(self, key: str, data: bytes | bytearray, content_type: str = ...) -> str: ...
    def create_multipart(self, key: str, content_type: str) -> str: ...
    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytearray) -> str: ...
    def complete_multipart(
        self, key: str, upload_id: str, etags: list[tuple[int, str]]
    ) -> None: ...
    def abort_multipart(self, key: str, upload_id: str) -> None: ...


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    parts: int  # 0 for a single PUT


class _Buffers:
    """The part buffers of one upload.

    Buffers are recycled (filling a part reuses the memory of an uploaded
    one: no allocator churn, which would keep freed multi-MiB blocks and
    inflate the resident size), and each buffer holds one slot of the run's
    ``budget`` from allocation until the upload ends, so the memory of all
    uploads together is at most ``budget x part size``.
    """

    def __init__(
        self, budget: threading.BoundedSemaphore | None, waiting: Callable[[], None]
    ) -> None:
        self._budget = budget
        self._waiting = waiting
        self._free: list[bytearray] = []
        self._owned = 0
        self._lock = threading.Lock()
        self._returned = threading.Event()

    def get(self, size: int) -> bytearray:
        while True:
            self._returned.clear()
            with self._lock:
                while self._free:
                    buf = self._free.pop()
                    if len(buf) == size:
                        return buf
                    self._release_one()  # parts grew: drop the smaller buffer
                if self._budget is None or self._budget.acquire(blocking=False):
                    self._owned += 1
                    break
            # Wait for one of our parts to come back, or for another upload
            # to give slots back.
            self._returned.wait(0.05)
            self._waiting()
        return bytearray(size)

    def put(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)
        self._returned.set()

    def _release_one(self) -> None:
        self._owned -= 1
        if self._budget is not None:
            self._budget.release()

    def close(self) -> None:
        """The upload is over: give every slot back."""
        with self._lock:
            self._free.clear()
            while self._owned:
                self._release_one()


ReadInto = Callable[[memoryview], int]
OnData = Callable[[memoryview], None]


class StreamUploader:
    """Uploads a byte stream of unknown length; see the module docstring."""

    def __init__(
        self,
        target: MultipartTarget,
        pool: ThreadPoolExecutor,
        schedule: PartSchedule | None = None,
        max_inflight: int = 2,
        *,
        cancel: threading.Event | None = None,
        budget: threading.BoundedSemaphore | None = None,
    ) -> None:
        """``budget`` caps the part buffers of all uploads sharing it; it must
        allow at least one buffer per concurrent upload."""
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.target = target
        self.pool = pool
        self.schedule = schedule or PartSchedule()
        self.max_inflight = max_inflight
        self.cancel = cancel or threading.Event()
        self.budget = budget

    def _fill(self, buf: bytearray, readinto: ReadInto, on_data: OnData) -> int:
        pos = 0
        with memoryview(buf) as view:
            while pos < len(buf):
                self._check_cancel()
                with view[pos:] as free:
                    count = readinto(free)
                if not count:
                    break
                with view[pos : pos + count] as chunk:
                    on_data(chunk)
                pos += count
        return pos

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("stopped: the run is being cancelled")

    def _next_buffer(self, part_number: int, key: str, buffers: _Buffers) -> bytearray:
        try:
            size = self.schedule.size(part_number)
        except PartLimitExceeded as exc:
            raise PermanentError(
                f"{key}: the stream is larger than S3's 10,000 parts can hold "
                f"({self.schedule.capacity()} bytes)",
                reason="ObjectTooLarge",
            ) from exc
        return buffers.get(size)

    def upload(
        self,
        key: str,
        readinto: ReadInto,
        on_data: OnData,
        content_type: str = "application/octet-stream",
        before_complete: Callable[[], None] | None = None,
    ) -> UploadResult:
        """Upload until ``readinto`` returns 0.

        ``before_complete`` runs after the end of the stream and before the
        object becomes visible; if it raises (the producer exited non-zero),
        the upload is aborted instead of completed.
        """
        futures: list[Future[tuple[int, str]]] = []
        failed = threading.Event()

        def waiting() -> None:
            self._check(futures, failed)
            self._check_cancel()

        buffers = _Buffers(self.budget, waiting)
        try:
            return self._upload(
                key, readinto, on_data, content_type, before_complete, buffers, futures, failed
            )
        finally:
            buffers.close()

    def _upload(  # noqa: PLR0917 - internal, called once
        self,
        key: str,
        readinto: ReadInto,
        on_data: OnData,
        content_type: str,
        before_complete: Callable[[], None] | None,
        buffers: _Buffers,
        futures: list[Future[tuple[int, str]]],
        failed: threading.Event,
    ) -> UploadResult:
        buf = self._next_buffer(1, key, buffers)
        filled = self._fill(buf, readinto, on_data)
        if filled < len(buf):
            del buf[filled:]
            if before_complete is not None:
                before_complete()
            self.target.put_bytes(key, buf, content_type)
            return UploadResult(key, filled, 0)
        upload_id = self.target.create_multipart(key, content_type)
        slots = threading.BoundedSemaphore(self.max_inflight)
        try:
            part_number, total = 1, 0
            while True:
                while not slots.acquire(timeout=0.2):
                    self._check(futures, failed)
                try:
                    self._check(futures, failed)
                    futures.append(
                        self.pool.submit(
                            self._send,
                            key=key,
                            upload_id=upload_id,
                            part_number=part_number,
                            data=buf,
                            slots=slots,
                            failed=failed,
                            buffers=buffers,
                        )
                    )
                except BaseException:
                    slots.release()
                    raise
                total += filled
                if filled < len(buf):
                    break
                part_number += 1
                buf = self._next_buffer(part_number, key, buffers)
                filled = self._fill(buf, readinto, on_data)
                if filled == 0:
                    break
                if filled < len(buf):
                    del buf[filled:]
            etags = [future.result() for future in futures]
            if before_complete is not None:
                before_complete()
            self.target.complete_multipart(key, upload_id, etags)
            return UploadResult(key, total, len(etags))
        except BaseException:
            for future in futures:
                future.cancel()
            for future in futures:
                with contextlib.suppress(BaseException):
                    future.result()
            self._abort(key, upload_id)
            raise

    @staticmethod
    def _check(futures: list[Future[tuple[int, str]]], failed: threading.Event) -> None:
        """Raise the error of a failed part, if any (``failed`` is set first)."""
        if failed.is_set():
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    future.result()

    def _send(
        self,
        *,
        key: str,
        upload_id: str,
        part_number: int,
        data: bytearray,
        slots: threading.BoundedSemaphore,
        failed: threading.Event,
        buffers: _Buffers,
    ) -> tuple[int, str]:
        try:
            etag = self.target.upload_part(key, upload_id, part_number, data)
        except BaseException:
            failed.set()
            raise
        finally:
            slots.release()
        buffers.put(data)
        return part_number, etag

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.target.abort_multipart(key, upload_id)
            log.info("aborted the incomplete multipart upload of %s", key)
        except CitusBackupError as exc:
            log.warning(
                "could not abort the multipart upload %s of %s: %s; an "
                "AbortIncompleteMultipartUpload lifecycle rule removes it later",
                upload_id,
                key,
                exc,
            )
