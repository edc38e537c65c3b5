"""The runner's S3 client: Signature V4, path-style REST calls over urllib3.

Why not the ``minio`` SDK (the operator keeps it, for lifecycle rules): the
runner makes about fifteen kinds of S3 call, and three of them (the multipart
primitives the streaming upload needs) are private methods of the SDK.
Importing the SDK also costs ~0.2 CPU-seconds per run (minio 7.2 builds a few
hundred dataclasses at import time). That is a third of the runner's own CPU,
spent on cores its pg_dumps already saturate: measured in docs/benchmarks.md,
it is most of what stood between the runner and the 1.15x-of-pg_dump target.
This module needs only urllib3 and the standard library (~40 ms to import).

Scope, deliberately small:

* path-style addressing (``http(s)://endpoint/bucket/key``), which MinIO and
  S3-compatible stores use, and AWS S3 still serves;
* Signature Version 4 with static credentials (plus an optional session
  token). The payload is hashed (sha256) over plain HTTP, where the signature
  is what protects the body, and sent as ``UNSIGNED-PAYLOAD`` over TLS, as the
  SDK did;
* when no region is configured, ``us-east-1`` is used (what MinIO accepts);
  S3's ``AuthorizationHeaderMalformed`` answer names the bucket's region, and
  the request is signed again once for it;
* errors: S3's XML ``<Error>`` becomes :class:`S3ResponseError` (code,
  message, HTTP status); a response that is not S3's (a proxy's HTML page,
  say) becomes :class:`S3UnexpectedResponse`; network failures stay urllib3's
  exceptions. :func:`citus_backup.runner.s3.translate` turns all of them into
  the project's errors.

Everything here is I/O glue; :func:`authorization` (the signature) is a pure
function with golden tests from AWS's documented examples.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast
from xml.sax.saxutils import escape

import urllib3

#: sha256 of an empty body (every bodyless request signs it).
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: x-amz-content-sha256 when the body is not hashed (over TLS).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: Region used to sign when none is configured: MinIO accepts it, and AWS
#: tells us the right one (see :meth:`S3Api.request`).
DEFAULT_REGION = "us-east-1"
ALGORITHM = "AWS4-HMAC-SHA256"
#: Largest error body read to find S3's error code (they are < 1 KiB).
ERROR_BODY_LIMIT = 64 * 1024


class S3ResponseError(Exception):
    """S3 answered with an error (its XML ``<Error>``, or a bodiless HEAD status)."""

    def __init__(self, code: str, message: str, status: int, region: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status
        #: The bucket's region, when S3 names it (AuthorizationHeaderMalformed).
        self.region = region


class S3UnexpectedResponse(Exception):
    """A response that is not S3's: wrong status with no S3 error in it."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {' '.join(body.split())[:200] or 'no body'}")
        self.status = status


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


# ------------------------------------------------------------------ signing
def quote_path(path: str) -> str:
    """URI-encode a path as SigV4 wants it for S3: every byte but unreserved and '/'."""
    return urllib.parse.quote(path, safe="/")


def canonical_query(query: Mapping[str, str]) -> str:
    """``a=1&b=`` with names and values URI-encoded, sorted by encoded name."""
    pairs = sorted(
        (urllib.parse.quote(k, safe=""), urllib.parse.quote(v, safe="")) for k, v in query.items()
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def authorization(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    payload_hash: str,
    credentials: Credentials,
    region: str,
    amz_date: str,
) -> str:
    """The ``Authorization`` header of a request (pure; AWS's examples are golden tests).

    ``path`` and ``query`` are already canonical (:func:`quote_path`,
    :func:`canonical_query`); every header in ``headers`` is signed (names
    lower-case; ``host`` and ``x-amz-date`` included).
    """
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
    signed = ";".join(names)
    request = "\n".join([method, path, query, canonical_headers, signed, payload_hash])
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_key).encode(), amz_date[:8])
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope},"
        f"SignedHeaders={signed},Signature={signature}"
    )


# ---------------------------------------------------------------------- XML
def _xml(data: bytes) -> ET.Element:
    return ET.fromstring(data)  # noqa: S314 - the configured endpoint's own answers


def _text(element: ET.Element, name: str) -> str:
    return element.findtext(f"{{*}}{name}") or ""


def _error_from(status: int, data: bytes, headers: Mapping[str, str], key: str | None) -> Exception:
    if data.lstrip().startswith(b"<"):
        try:
            root = _xml(data)
        except ET.ParseError:
            root = None
        if root is not None and root.tag.rsplit("}", 1)[-1] == "Error":
            return S3ResponseError(
                _text(root, "Code") or "Error",
                _text(root, "Message"),
                status,
                _text(root, "Region") or None,
            )
    # HEAD answers have no body; MinIO still names the code in a header.
    code = headers.get("x-minio-error-code") or {
        301: "PermanentRedirect",
        307: "Redirect",
        400: "BadRequest",
        403: "AccessDenied",
        404: "NoSuchKey" if key is not None else "NoSuchBucket",
        405: "MethodNotAllowed",
        409: "Conflict",
        412: "PreconditionFailed",
        416: "InvalidRange",
    }.get(status)
    if code is not None and not data.strip():
        return S3ResponseError(code, headers.get("x-minio-error-desc", ""), status)
    return S3UnexpectedResponse(status, data[:1024].decode("utf-8", "replace"))


# ------------------------------------------------------------------- client
@dataclass(frozen=True)
class ListedUpload:
    key: str
    upload_id: str


class S3Api:
    """S3 REST calls against one endpoint (path-style, SigV4)."""

    def __init__(
        self,
        endpoint: str,
        *,
        secure: bool,
        credentials: Credentials | None,
        http: urllib3.PoolManager,
        region: str | None = None,
    ) -> None:
        scheme = "https" if secure else "http"
        parsed = urllib3.util.parse_url(f"{scheme}://{endpoint}")
        if not parsed.host:
            raise ValueError(f"S3 endpoint {endpoint!r} has no host")
        self.secure = secure
        self.credentials = credentials
        self.region = region or DEFAULT_REGION
        self.http = http
        #: The Host header as sent and signed (no default port).
        self.host = endpoint
        self._pool = http.connection_from_host(parsed.host, parsed.port, scheme)

    # -------------------------------------------------------------- core
    def _headers(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | bytearray | memoryview | None,
    ) -> dict[str, str]:
        out = {k.lower(): v for k, v in headers.items()}
        out["host"] = self.host
        out["x-amz-date"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if body is None or len(body) == 0:
            payload = EMPTY_SHA256
        elif self.secure:
            payload = UNSIGNED_PAYLOAD
        else:
            payload = hashlib.sha256(body).hexdigest()
        out["x-amz-content-sha256"] = payload
        if self.credentials is None:
            return out
        if self.credentials.session_token:
            out["x-amz-security-token"] = self.credentials.session_token
        out["authorization"] = authorization(
            method=method,
            path=path,
            query=query,
            headers=out,
            payload_hash=payload,
            credentials=self.credentials,
            region=self.region,
            amz_date=out["x-amz-date"],
        )
        return out

    def request(
        self,
        method: str,
        bucket: str,
        key: str | None = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | bytearray | memoryview | None = None,
        stream: bool = False,
        ok: Sequence[int] = (200,),
    ) -> urllib3.BaseHTTPResponse:
        """One signed request; raises unless the status is in ``ok``.

        With ``stream`` the body is not read: the caller reads it and calls
        ``release_conn()``.
        """
        path = quote_path(f"/{bucket}" if key is None else f"/{bucket}/{key}")
        canonical = canonical_query(query or {})
        target = f"{path}?{canonical}" if canonical else path
        for attempt in (1, 2):
            response = self._pool.urlopen(
                method,
                target,
                # urllib3 sends any buffer as is (its annotation names bytes only).
                body=cast(bytes | None, body),
                headers=self._headers(method, path, canonical, headers or {}, body),
                redirect=False,
                assert_same_host=False,
                preload_content=not stream,
                release_conn=not stream,
            )
            if response.status in ok:
                return response
            data = response.read(ERROR_BODY_LIMIT) if stream else response.data
            response.release_conn()
            error = _error_from(response.status, data or b"", response.headers, key)
            if (
                attempt == 1
                and isinstance(error, S3ResponseError)
                and error.code == "AuthorizationHeaderMalformed"
                and error.region
                and error.region != self.region
            ):
                self.region = error.region  # S3 named the bucket's region: sign for it
                continue
            raise error
        raise AssertionError("unreachable")

    def _xml_request(
        self,
        method: str,
        bucket: str,
        key: str | None = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> ET.Element:
        """A request whose answer is an XML document (parsed)."""
        response = self.request(method, bucket, key, query=query, headers=headers, body=body)
        root = _xml(response.data)
        if root.tag.rsplit("}", 1)[-1] == "Error":  # S3 may send errors with 200
            raise _error_from(500, response.data, {}, key)
        return root

    @staticmethod
    def _xml_body(xml: str) -> tuple[bytes, dict[str, str]]:
        body = xml.encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - S3's Content-MD5
        return body, {"Content-Type": "application/xml", "Content-MD5": md5}

    # --------------------------------------------------------- buckets
    def make_bucket(self, bucket: str) -> None:
        body = None
        if self.region != DEFAULT_REGION:
            body = (
                "<CreateBucketConfiguration><LocationConstraint>"
                f"{escape(self.region)}</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        self.request("PUT", bucket, body=body)

    def list_objects(
        self, bucket: str, prefix: str, page_size: int | None = None
    ) -> Iterator[tuple[str, int]]:
        """(key, size) under ``prefix``, recursively (ListObjectsV2, page after
        page as the caller iterates; ``page_size`` keys per request, S3's
        default 1000 when None)."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            if page_size is not None:
                query["max-keys"] = str(page_size)
            root = self._xml_request("GET", bucket, query=query)
            for item in root.iterfind("{*}Contents"):
                yield urllib.parse.unquote_plus(_text(item, "Key")), int(_text(item, "Size") or 0)
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return

    # --------------------------------------------------------- objects
    def put_object(
        self, bucket: str, key: str, data: bytes | bytearray, headers: Mapping[str, str]
    ) -> str:
        response = self.request("PUT", bucket, key, headers=headers, body=data)
        return str(response.headers.get("ETag", "")).strip('"')

    def head_object(self, bucket: str, key: str) -> tuple[int, str] | None:
        """(size, etag), or None if there is no such object."""
        try:
            response = self.request("HEAD", bucket, key)
        except S3ResponseError as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject") or (
                exc.status == 404 and exc.code != "NoSuchBucket"
            ):
                return None
            raise
        return (
            int(response.headers.get("Content-Length", "0")),
            str(response.headers.get("ETag", "")).strip('"'),
        )

    def get_object(
        self,
        bucket: str,
        key: str,
        *,
        offset: int = 0,
        length: int = 0,
        if_match: str | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """A streaming response (read it, then ``release_conn()``)."""
        headers: dict[str, str] = {}
        if offset or length:
            headers["Range"] = f"bytes={offset}-{offset + length - 1 if length else ''}"
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        return self.request("GET", bucket, key, headers=headers, stream=True, ok=(200, 206))

    def delete_object(self, bucket: str, key: str) -> None:
        self.request("DELETE", bucket, key, ok=(200, 204))

    def copy_object(self, bucket: str, dest: str, source: str) -> None:
        """Server-side copy (up to 5 GiB); S3 copies the source's tags too."""
        self._xml_request(
            "PUT", bucket, dest, headers={"x-amz-copy-source": quote_path(f"/{bucket}/{source}")}
        )

    def copy_multipart(
        self,
        bucket: str,
        dest: str,
        source: str,
        *,
        size: int,
        part_size: int,
        headers: Mapping[str, str],
    ) -> None:
        """Server-side copy of a large object, ``part_size`` bytes per UploadPartCopy.

        Multipart copies do not carry the source's tags: ``headers`` (with
        ``x-amz-tagging``) apply to the new object.
        """
        upload_id = self.create_multipart(bucket, dest, headers)
        try:
            etags: list[tuple[int, str]] = []
            copy_source = quote_path(f"/{bucket}/{source}")
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(start + part_size, size) - 1
                root = self._xml_request(
                    "PUT",
                    bucket,
                    dest,
                    query={"partNumber": str(number), "uploadId": upload_id},
                    headers={
                        "x-amz-copy-source": copy_source,
                        "x-amz-copy-source-range": f"bytes={start}-{end}",
                    },
                )
                etags.append((number, _text(root, "ETag").strip('"')))
            self.complete_multipart(bucket, dest, upload_id, etags)
        except BaseException:
            # The first error is the one to report.
            with contextlib.suppress(Exception):
                self.abort_multipart(bucket, dest, upload_id)
            raise

    # ------------------------------------------------------------ tags
    def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        root = self._xml_request("GET", bucket, key, query={"tagging": ""})
        return {_text(t, "Key"): _text(t, "Value") for t in root.iterfind(".//{*}Tag")}

    def put_tags(self, bucket: str, key: str, tags: Mapping[str, str]) -> None:
        tag_xml = "".join(
            f"<Tag><Key>{escape(k)}</Key><Value>{escape(v)}</Value></Tag>" for k, v in tags.items()
        )
        body, headers = self._xml_body(f"<Tagging><TagSet>{tag_xml}</TagSet></Tagging>")
        self.request("PUT", bucket, key, query={"tagging": ""}, headers=headers, body=body)

    def delete_tags(self, bucket: str, key: str) -> None:
        self.request("DELETE", bucket, key, query={"tagging": ""}, ok=(200, 204))

    # ------------------------------------------------------- multipart
    def create_multipart(self, bucket: str, key: str, headers: Mapping[str, str]) -> str:
        root = self._xml_request("POST", bucket, key, query={"uploads": ""}, headers=headers)
        upload_id = _text(root, "UploadId")
        if not upload_id:
            raise S3UnexpectedResponse(200, "CreateMultipartUpload answered without an UploadId")
        return upload_id

    def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, data: bytes | bytearray
    ) -> str:
        response = self.request(
            "PUT",
            bucket,
            key,
            query={"partNumber": str(number), "uploadId": upload_id},
            body=data,
        )
        return str(response.headers.get("ETag", "")).strip('"')

    def complete_multipart(
        self, bucket: str, key: str, upload_id: str, etags: Sequence[tuple[int, str]]
    ) -> None:
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>&quot;{escape(e)}&quot;</ETag></Part>"
            for n, e in etags
        )
        body, headers = self._xml_body(
            f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>"
        )
        self._xml_request(
            "POST", bucket, key, query={"uploadId": upload_id}, headers=headers, body=body
        )

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        self.request("DELETE", bucket, key, query={"uploadId": upload_id}, ok=(200, 204))

    def list_multipart_uploads(self, bucket: str, prefix: str) -> list[ListedUpload]:
        root = self._xml_request(
            "GET", bucket, query={"uploads": "", "prefix": prefix, "encoding-type": "url"}
        )
        return [
            ListedUpload(urllib.parse.unquote_plus(_text(u, "Key")), _text(u, "UploadId"))
            for u in root.iterfind("{*}Upload")
        ]
