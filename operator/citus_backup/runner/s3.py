"""The runner's S3 store: one bucket, errors the project understands.

Calls go through :mod:`.s3api`, the runner's own small SigV4 client (why not
the minio SDK: see there). The streaming multipart upload lives in
:mod:`.upload`; :class:`S3Store` is its target.

Every S3/urllib3 exception is turned into :class:`PermanentError` (bad
credentials, missing bucket: a human must act) or :class:`TransientError`
(endpoint down, connection lost, 5xx: retry later), with a one-line message
naming the endpoint, bucket and key — never the credentials.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from citus_backup.errors import CitusBackupError, PermanentError, TransientError
from citus_backup.runner.config import S3Config
from citus_backup.runner.partsize import MAX_PART_SIZE
from citus_backup.runner.s3api import Credentials, S3Api, S3ResponseError, S3UnexpectedResponse

log = logging.getLogger("citus_backup.runner")

#: Object tag set on everything a backup writes: the bucket's lifecycle rules
#: (one per tier, owned by the operator) expire only objects carrying it, and
#: :mod:`.protect` removes it from the newest successful set of each tier. The
#: same key/value as :data:`citus_backup.specs.lifecycle.EXPIRABLE_TAG_KEY`
#: (a unit test checks); not imported from there to keep the runner light.
EXPIRABLE_TAG_KEY = "citusbackup.io/expirable"
EXPIRABLE_TAG_VALUE = "true"
#: The ``x-amz-tagging`` header value (URL-query encoded) for uploads.
EXPIRABLE_TAGGING_HEADER = "citusbackup.io%2Fexpirable=true"

#: Bytes per read when streaming an object down.
READ_CHUNK = 1024 * 1024
#: First and largest request of a :class:`RangedRead`.
FIRST_RANGE = 256 * 1024
LARGEST_RANGE = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
#: urllib3 retries per request (connection errors, 500/502/503/504).
RETRIES = 5
RETRY_BACKOFF = 0.5

_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidSecurity",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
        "OperationAborted",
        "RequestTimeTooSkewed",
    }
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _s3_error(exc: S3ResponseError, what: str, endpoint: str) -> CitusBackupError:
    code = exc.code or "Error"
    detail = _one_line(exc.message or code)
    if code == "NoSuchBucket":
        return PermanentError(
            f"S3 {what}: bucket does not exist at {endpoint} "
            "(create it, or pass --create-bucket to backup)",
            reason="BucketNotFound",
        )
    if code in _AUTH_CODES:
        return PermanentError(
            f"S3 {what}: the S3 credentials were rejected by {endpoint} ({code}: {detail})",
            reason="S3AuthenticationFailed",
        )
    known: dict[str, tuple[type[CitusBackupError], str, str]] = {
        "AccessDenied": (PermanentError, "S3AccessDenied", f"access denied by {endpoint}"),
        "NoSuchKey": (PermanentError, "ObjectNotFound", "object does not exist"),
        "NoSuchObject": (PermanentError, "ObjectNotFound", "object does not exist"),
        "PreconditionFailed": (
            PermanentError,
            "ObjectChanged",
            "the object changed while it was being read",
        ),
    }
    if code in known:
        cls, reason, text = known[code]
        return cls(f"S3 {what}: {text}", reason=reason)
    if code in _TRANSIENT_CODES or exc.status >= 500:
        return TransientError(f"S3 {what}: {code}: {detail}", reason="S3Unavailable")
    return PermanentError(f"S3 {what}: {code}: {detail}", reason="S3Error")


def translate(exc: BaseException, what: str, endpoint: str) -> CitusBackupError:
    """Turn an S3/urllib3 exception about ``what`` into the project's error."""
    if isinstance(exc, CitusBackupError):
        return exc
    if isinstance(exc, S3ResponseError):
        return _s3_error(exc, what, endpoint)
    if isinstance(exc, S3UnexpectedResponse):
        return TransientError(
            f"S3 {what}: unexpected response from {endpoint}: {_one_line(str(exc))[:300]}",
            reason="S3Unavailable",
        )
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, (HTTPError, OSError)):
        return _network_error(exc, what, endpoint)
    if isinstance(exc, ValueError):
        return PermanentError(f"S3 {what}: {_one_line(str(exc))}", reason="InvalidConfiguration")
    return TransientError(
        f"S3 {what}: {type(exc).__name__}: {_one_line(str(exc))}", reason="S3Error"
    )


def _network_error(exc: BaseException, what: str, endpoint: str) -> CitusBackupError:
    if isinstance(exc, SSLError):
        return PermanentError(
            f"S3 {what}: TLS error talking to {endpoint}: {_one_line(str(exc))[:300]} "
            "(check S3_CA_FILE / --s3-ca-file)",
            reason="S3TLSError",
        )
    if isinstance(exc, (NewConnectionError, ConnectionRefusedError)):
        return TransientError(
            f"S3 {what}: cannot connect to {endpoint} (connection refused or unreachable)",
            reason="S3Unreachable",
        )
    if isinstance(exc, ReadTimeoutError):
        return TransientError(f"S3 {what}: {endpoint} timed out", reason="S3Timeout")
    if isinstance(exc, ProtocolError):
        return TransientError(
            f"S3 {what}: connection to {endpoint} lost ({_one_line(str(exc))[:200]})",
            reason="S3ConnectionLost",
        )
    return TransientError(
        f"S3 {what}: network error talking to {endpoint}: {_one_line(str(exc))[:300]}",
        reason="S3Unreachable",
    )


def make_api(config: S3Config, max_connections: int = 10) -> S3Api:
    """The S3 client with our timeouts, retries and TLS settings."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        maxsize=max(max_connections, 4),
        cert_reqs="CERT_NONE" if config.insecure_skip_verify else "CERT_REQUIRED",
        ca_certs=config.ca_file or None,
        retries=urllib3.Retry(
            total=RETRIES,
            backoff_factor=RETRY_BACKOFF,
            backoff_max=10,
            status_forcelist=[500, 502, 503, 504],
            # The final answer's body names S3's error: return it, do not raise.
            raise_on_status=False,
        ),
    )
    if config.insecure_skip_verify:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    credentials = None
    if config.access_key and config.secret_key:
        credentials = Credentials(config.access_key, config.secret_key, config.session_token)
    return S3Api(
        config.endpoint,
        secure=config.secure,
        region=config.region,
        credentials=credentials,
        http=http,
    )


@dataclass(frozen=True)
class ObjectStat:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectRead:
    """An open object download: iterate ``chunks``; ``etag``/``size`` from headers."""

    chunks: Iterator[bytes]
    etag: str
    size: int


class S3Store:
    """One bucket on one endpoint, with errors translated."""

    def __init__(self, config: S3Config, api: S3Api | None = None, max_connections: int = 10):
        self.config = config
        self.bucket = config.bucket
        self.api = api or make_api(config, max_connections)
        #: Extra upload headers: every object written is tagged expirable (see
        #: EXPIRABLE_TAG_KEY); copies keep the source's tags (S3's default COPY directive).
        self._tagging: dict[str, str] = {"x-amz-tagging": EXPIRABLE_TAGGING_HEADER}

    def _what(self, action: str, key: str | None = None) -> str:
        target = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        return f"{action} {target}"

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> CitusBackupError:
        return translate(exc, self._what(action, key), self.config.url)

    def check_bucket(self, create: bool = False) -> bool:
        """Fail unless the bucket is reachable with our credentials.

        A listing (not HEAD) is used because its XML errors tell a wrong key
        from a missing bucket. Returns True if the bucket was created.
        """
        try:
            next(
                iter(self.api.list_objects(self.bucket, ".citus-backup-probe/", page_size=1)), None
            )
            return False
        except Exception as exc:
            error = self._error(exc, "check bucket")
            if error.reason != "BucketNotFound" or not create:
                raise error from exc
        try:
            self.api.make_bucket(self.bucket)
        except Exception as exc:
            raise self._error(exc, "create bucket") from exc
        log.info("created bucket %s", self.bucket)
        return True

    def put_bytes(
        self, key: str, data: bytes | bytearray, content_type: str = "application/octet-stream"
    ) -> str:
        try:
            return self.api.put_object(
                self.bucket, key, data, {"Content-Type": content_type, **self._tagging}
            )
        except Exception as exc:
            raise self._error(exc, "upload", key) from exc

    def get_bytes(self, key: str, limit: int) -> bytes:
        """A small object (manifest, globals) read whole; larger than ``limit`` fails."""
        with self.open_read(key) as read:
            if read.size > limit:
                raise PermanentError(
                    f"S3 object s3://{self.bucket}/{key} is {read.size} bytes, "
                    f"more than the {limit} expected",
                    reason="ObjectTooLarge",
                )
            return b"".join(read.chunks)

    def stat(self, key: str) -> ObjectStat | None:
        try:
            found = self.api.head_object(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, "stat", key) from exc
        return None if found is None else ObjectStat(key, found[0], found[1])

    @contextlib.contextmanager
    def open_read(
        self, key: str, if_match: str | None = None, offset: int = 0, length: int = 0
    ) -> Iterator[ObjectRead]:
        """Stream an object (or ``length`` bytes from ``offset``); ``if_match``
        (an ETag) makes S3 refuse if the object was replaced meanwhile."""
        try:
            response = self.api.get_object(
                self.bucket, key, offset=offset, length=length, if_match=if_match
            )
        except Exception as exc:
            raise self._error(exc, "download", key) from exc
        try:
            etag = str(response.headers.get("ETag", "")).strip('"')
            size = int(response.headers.get("Content-Length", "-1"))

            def chunks() -> Iterator[bytes]:
                try:
                    yield from response.stream(READ_CHUNK)
                except Exception as exc:
                    raise self._error(exc, "download", key) from exc

            yield ObjectRead(chunks(), etag, size)
        finally:
            response.close()
            response.release_conn()

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix``, recursively."""
        try:
            yield from self.api.list_objects(self.bucket, prefix)
        except Exception as exc:
            raise self._error(exc, "list", prefix) from exc

    def copy(self, source_key: str, dest_key: str, size: int) -> None:
        """Server-side copy; above 5 GiB (the CopyObject limit) a multipart copy."""
        try:
            if size > MAX_PART_SIZE:
                self.api.copy_multipart(
                    self.bucket,
                    dest_key,
                    source_key,
                    size=size,
                    part_size=MAX_PART_SIZE,
                    headers=self._tagging,
                )
            else:
                self.api.copy_object(self.bucket, dest_key, source_key)
        except Exception as exc:
            raise self._error(exc, "copy to", dest_key) from exc

    def remove(self, key: str) -> None:
        try:
            self.api.delete_object(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, "delete", key) from exc

    def expirable(self, key: str) -> bool:
        """Whether the object carries the expirable tag."""
        try:
            tags = self.api.get_tags(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, "read tags of", key) from exc
        return tags.get(EXPIRABLE_TAG_KEY) == EXPIRABLE_TAG_VALUE

    def set_expirable(self, key: str, expirable: bool) -> None:
        """Put the expirable tag on the object, or remove every tag from it.

        Our objects carry no other tag (we write them), so removing all tags is
        removing the expirable one, in one request.
        """
        try:
            if expirable:
                self.api.put_tags(self.bucket, key, {EXPIRABLE_TAG_KEY: EXPIRABLE_TAG_VALUE})
            else:
                self.api.delete_tags(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, "tag" if expirable else "untag", key) from exc

    # Multipart upload primitives, for :class:`~.upload.StreamUploader`.
    def create_multipart(self, key: str, content_type: str) -> str:
        try:
            return self.api.create_multipart(
                self.bucket, key, {"Content-Type": content_type, **self._tagging}
            )
        except Exception as exc:
            raise self._error(exc, "start multipart upload", key) from exc

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytearray) -> str:
        try:
            return self.api.upload_part(self.bucket, key, upload_id, part_number, data)
        except Exception as exc:
            raise self._error(exc, f"upload part {part_number} of", key) from exc

    def complete_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None:
        try:
            self.api.complete_multipart(self.bucket, key, upload_id, etags)
        except Exception as exc:
            raise self._error(exc, "complete multipart upload", key) from exc

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.api.abort_multipart(self.bucket, key, upload_id)
        except Exception as exc:
            raise self._error(exc, "abort multipart upload", key) from exc

    def incomplete_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads in progress under ``prefix``."""
        try:
            result = self.api.list_multipart_uploads(self.bucket, prefix)
        except Exception as exc:
            raise self._error(exc, "list multipart uploads", prefix) from exc
        return [(u.key, u.upload_id) for u in result]


class RangedRead:
    """Reads an object with ranged GETs of growing size (256 KiB, 1 MiB, ...).

    For a reader that needs only the head of an object — pg_restore reading
    a dump's table of contents — a plain GET would make S3 push far more than
    is read (socket buffers fill before the reader stops); growing ranges
    bound the waste while still reading a long head efficiently.
    """

    def __init__(
        self,
        store: S3Store,
        key: str,
        size: int,
        if_match: str | None = None,
        *,
        first: int = FIRST_RANGE,
        largest: int = LARGEST_RANGE,
        before_next: Callable[[], bool] | None = None,
    ) -> None:
        """``before_next`` runs before each further range; False stops reading
        (the reader has consumed what it got and needs no more)."""
        self.before_next = before_next
        self.store = store
        self.key = key
        self.size = size
        self.etag = if_match or ""
        self.first = first
        self.largest = largest

    def chunks(self) -> Generator[bytes, None, None]:
        offset, length = 0, self.first
        while offset < self.size:
            with self.store.open_read(
                self.key, self.etag or None, offset, min(length, self.size - offset)
            ) as read:
                self.etag = self.etag or read.etag
                got = 0
                for chunk in read.chunks:
                    got += len(chunk)
                    yield chunk
            if not got or (self.before_next is not None and not self.before_next()):
                return
            offset += got
            length = min(length * 4, self.largest)
