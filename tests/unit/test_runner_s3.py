"""Streaming multipart uploads (:mod:`.upload`, against a fake) and S3 error translation."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from minio.error import S3Error, ServerError
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from citus_backup.clients.s3 import sdk_error
from citus_backup.errors import PermanentError, TransientError
from citus_backup.runner.config import S3Config
from citus_backup.runner.partsize import MIN_PART_SIZE, PartSchedule
from citus_backup.runner.s3 import (
    ObjectRead,
    RangedRead,
    S3Store,
    make_api,
    translate,
)
from citus_backup.runner.s3api import S3ResponseError, S3UnexpectedResponse
from citus_backup.runner.upload import StreamUploader

MiB = 1024 * 1024


class FakeTarget:
    """Records calls like S3 would; can fail a given part."""

    def __init__(self, fail_part: int | None = None, delay: float = 0.0) -> None:
        self.fail_part = fail_part
        self.delay = delay
        self.puts: dict[str, bytes] = {}
        self.parts: dict[int, bytes] = {}
        self.completed: list[tuple[int, str]] | None = None
        self.aborted = False
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()

    def put_bytes(self, key: str, data: bytes | bytearray, content_type: str = "") -> str:
        self.puts[key] = bytes(data)
        return "etag"

    def create_multipart(self, key: str, content_type: str) -> str:
        return "upload-1"

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytearray) -> str:
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            time.sleep(self.delay)
            if part_number == self.fail_part:
                raise TransientError("S3 upload part: connection lost", reason="S3ConnectionLost")
            self.parts[part_number] = bytes(data)
            return f"etag-{part_number}"
        finally:
            with self._lock:
                self.inflight -= 1

    def complete_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None:
        self.completed = etags

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.aborted = True


def source(data: bytes, chunk: int = 300_000) -> Any:
    stream = io.BytesIO(data)

    def readinto(view: memoryview) -> int:
        piece = stream.read(min(chunk, len(view)))
        view[: len(piece)] = piece
        return len(piece)

    return readinto


def upload(target: FakeTarget, data: bytes, **kwargs: Any) -> Any:
    seen = bytearray()
    with ThreadPoolExecutor(4) as pool:
        uploader = StreamUploader(target, pool, PartSchedule(MIN_PART_SIZE), max_inflight=2)
        result = uploader.upload("k", source(data), seen.extend, **kwargs)
    assert bytes(seen) == data
    return result


def test_small_stream_is_one_put() -> None:
    target = FakeTarget()
    result = upload(target, b"x" * 1000)
    assert (result.size, result.parts) == (1000, 0)
    assert target.puts["k"] == b"x" * 1000
    assert target.completed is None


def test_empty_stream_is_an_empty_object() -> None:
    target = FakeTarget()
    assert upload(target, b"").size == 0
    assert target.puts["k"] == b""


def test_large_stream_is_uploaded_in_parts_in_order() -> None:
    data = bytes(range(256)) * (12 * MiB // 256) + b"tail"
    target = FakeTarget(delay=0.01)
    result = upload(target, data)
    assert result.parts == 3
    assert target.completed == [(1, "etag-1"), (2, "etag-2"), (3, "etag-3")]
    assert b"".join(target.parts[n] for n in (1, 2, 3)) == data
    assert len(target.parts[1]) == MIN_PART_SIZE
    assert not target.aborted


def test_exact_multiple_of_part_size_has_no_empty_part() -> None:
    target = FakeTarget()
    result = upload(target, b"a" * (2 * MIN_PART_SIZE))
    assert result.parts == 2
    assert target.completed is not None
    assert len(target.completed) == 2


def test_inflight_parts_are_bounded() -> None:
    target = FakeTarget(delay=0.05)
    upload(target, b"z" * (8 * MIN_PART_SIZE))
    assert target.max_inflight <= 2


def test_a_failed_part_aborts_the_upload() -> None:
    target = FakeTarget(fail_part=2)
    with pytest.raises(TransientError, match="connection lost"):
        upload(target, b"y" * (4 * MIN_PART_SIZE))
    assert target.aborted
    assert target.completed is None


def test_producer_failure_aborts_instead_of_completing() -> None:
    def before_complete() -> None:
        raise PermanentError("pg_dump exited with code 1", reason="ToolFailed")

    target = FakeTarget()
    with pytest.raises(PermanentError, match="pg_dump"):
        upload(target, b"y" * (2 * MIN_PART_SIZE + 5), before_complete=before_complete)
    assert target.aborted
    assert target.completed is None
    small = FakeTarget()
    with pytest.raises(PermanentError):
        upload(small, b"tiny", before_complete=before_complete)
    assert small.puts == {}


def test_cancel_stops_the_stream_and_aborts() -> None:
    target = FakeTarget()
    cancel = threading.Event()
    calls = 0

    def readinto(view: memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 80:  # after the first part: a multipart upload is open
            cancel.set()
        count = min(100_000, len(view))
        view[:count] = b"c" * count
        return count

    with ThreadPoolExecutor(2) as pool:
        uploader = StreamUploader(target, pool, PartSchedule(MIN_PART_SIZE), 2, cancel=cancel)
        with pytest.raises(TransientError) as err:
            uploader.upload("k", readinto, lambda _: None)
    assert err.value.reason == "Cancelled"
    assert target.aborted


def s3_error(code: str, status: int = 400) -> S3ResponseError:
    return S3ResponseError(code, f"{code} message", status)


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        (s3_error("NoSuchBucket"), PermanentError, "BucketNotFound"),
        (s3_error("InvalidAccessKeyId"), PermanentError, "S3AuthenticationFailed"),
        (s3_error("SignatureDoesNotMatch"), PermanentError, "S3AuthenticationFailed"),
        (s3_error("AccessDenied"), PermanentError, "S3AccessDenied"),
        (s3_error("NoSuchKey"), PermanentError, "ObjectNotFound"),
        (s3_error("PreconditionFailed"), PermanentError, "ObjectChanged"),
        (s3_error("SlowDown"), TransientError, "S3Unavailable"),
        (s3_error("Weird"), PermanentError, "S3Error"),
        (s3_error("Weird", 503), TransientError, "S3Unavailable"),
        (S3UnexpectedResponse(502, "<html>Bad gateway</html>"), TransientError, "S3Unavailable"),
        (
            MaxRetryError(None, "/b", NewConnectionError(None, "refused")),  # type: ignore[arg-type]
            TransientError,
            "S3Unreachable",
        ),
        (
            ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
            TransientError,
            "S3ConnectionLost",
        ),
        (ConnectionRefusedError(111, "refused"), TransientError, "S3Unreachable"),
        (ValueError("bucket name invalid"), PermanentError, "InvalidConfiguration"),
    ],
)
def test_errors_are_translated(exc: BaseException, cls: type, reason: str) -> None:
    error = translate(exc, "upload s3://b/k", "http://127.0.0.1:9000")
    assert isinstance(error, cls)
    assert error.reason == reason
    assert "\n" not in str(error)
    assert str(error).startswith("S3 upload s3://b/k")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (S3Error(None, "NoSuchBucket", "m", "/b", "r", "h"), "BucketNotFound"),  # type: ignore[arg-type]
        (S3Error(None, "SignatureDoesNotMatch", "m", "/b", "r", "h"), "S3AuthenticationFailed"),  # type: ignore[arg-type]
        (ServerError("server failed with HTTP status code 503", 503), "S3Unavailable"),
    ],
)
def test_the_operators_sdk_errors_are_translated_alike(exc: BaseException, reason: str) -> None:
    assert translate(sdk_error(exc), "read lifecycle of s3://b", "http://h").reason == reason


class FakeApi:
    """Records copy calls: the boundary S3Store.copy chooses between."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def copy_object(self, bucket: str, key: str, source: str) -> None:
        self.calls.append(f"copy {source} -> {key}")

    def copy_multipart(self, bucket: str, key: str, source: str, **kw: Any) -> None:
        self.calls.append(f"multipart copy {source} -> {key} tagged {kw['headers']}")


def test_copies_over_5_gib_are_multipart_server_side_and_stay_tagged() -> None:
    api = FakeApi()
    store = S3Store(S3Config(endpoint="h:1", secure=False, bucket="b"), api=api)  # type: ignore[arg-type]
    store.copy("daily/x/a.dump", "monthly/x/a.dump", 100)
    store.copy("daily/x/b.dump", "monthly/x/b.dump", 6 * 1024 * MiB)
    assert api.calls == [
        "copy daily/x/a.dump -> monthly/x/a.dump",
        "multipart copy daily/x/b.dump -> monthly/x/b.dump tagged "
        "{'x-amz-tagging': 'citusbackup.io%2Fexpirable=true'}",
    ]


class FakeStore:
    """open_read over an in-memory object, recording the ranges asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[int, int, str | None]] = []

    @contextlib.contextmanager
    def open_read(
        self, key: str, if_match: str | None = None, offset: int = 0, length: int = 0
    ) -> Iterator[ObjectRead]:
        self.requests.append((offset, length, if_match))
        piece = self.data[offset : offset + length] if length else self.data[offset:]
        yield ObjectRead(
            iter([piece[i : i + 1000] for i in range(0, len(piece), 1000)]), "e1", len(piece)
        )


def test_ranged_read_grows_ranges_and_stops_when_the_reader_does() -> None:
    data = bytes(range(256)) * 4000  # ~1 MB
    store = FakeStore(data)
    reader = RangedRead(store, "k", len(data), first=10_000, largest=300_000)  # type: ignore[arg-type]
    assert b"".join(reader.chunks()) == data
    assert [r[:2] for r in store.requests] == [
        (0, 10_000),
        (10_000, 40_000),
        (50_000, 160_000),
        (210_000, 300_000),
        (510_000, 300_000),
        (810_000, len(data) - 810_000),
    ]
    assert reader.etag == "e1"
    assert store.requests[1][2] == "e1"  # later ranges insist on the same object

    store = FakeStore(data)
    chunks = RangedRead(store, "k", len(data), first=10_000).chunks()  # type: ignore[arg-type]
    head = next(chunks)
    chunks.close()
    assert len(head) == 1000
    assert len(store.requests) == 1


def test_budget_bounds_buffers_across_uploads() -> None:
    budget = threading.BoundedSemaphore(3)
    targets = [FakeTarget(delay=0.02) for _ in range(2)]
    peak = 0
    lock = threading.Lock()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            with lock:
                peak = max(peak, 3 - budget._value)  # type: ignore[attr-defined]
            time.sleep(0.001)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        uploader = StreamUploader(
            pool=pool, target=targets[0], schedule=PartSchedule(MIN_PART_SIZE), budget=budget
        )
        other = StreamUploader(
            pool=pool, target=targets[1], schedule=PartSchedule(MIN_PART_SIZE), budget=budget
        )
        data = b"q" * (5 * MIN_PART_SIZE)
        with ThreadPoolExecutor(2) as runners:
            results = [
                runners.submit(u.upload, "k", source(data), lambda _: None)
                for u in (uploader, other)
            ]
            assert [r.result().size for r in results] == [len(data), len(data)]
    done.set()
    watcher.join()
    assert peak <= 3
    assert budget._value == 3  # type: ignore[attr-defined]  # every slot given back


def test_client_tls_settings() -> None:
    verified = make_api(
        S3Config(endpoint="s3.example:443", secure=True, bucket="b", ca_file="/etc/ca.pem")
    )
    kw = verified.http.connection_pool_kw
    assert (kw["cert_reqs"], kw["ca_certs"]) == ("CERT_REQUIRED", "/etc/ca.pem")
    assert verified._pool.scheme == "https"
    unverified = make_api(
        S3Config(endpoint="s3.example", secure=True, bucket="b", insecure_skip_verify=True)
    )
    assert unverified.http.connection_pool_kw["cert_reqs"] == "CERT_NONE"
    plain = make_api(S3Config(endpoint="127.0.0.1:9000", secure=False, bucket="b"))
    assert plain._pool.scheme == "http"
    assert (plain._pool.host, plain._pool.port) == ("127.0.0.1", 9000)
