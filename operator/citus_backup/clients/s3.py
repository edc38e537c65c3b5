"""The operator's own S3 access: bucket lifecycle rules and backup catalogue reads.

Why a separate wrapper (the runner has :class:`citus_backup.runner.s3.S3Store`):
the operator only reads and writes a bucket's lifecycle configuration and
lists/reads manifests, and it works in the S3 API's JSON shape
(``{"ID": ..., "Filter": {"And": {...}}, "Expiration": {"Days": N}}``, see
:mod:`citus_backup.specs.lifecycle`) while the ``minio`` SDK speaks its own
classes; this module converts both ways, so the reconciler stays pure.

Credentials are read from the policy's Secrets by the caller, passed in
memory, and never logged or put in messages (errors name the endpoint,
bucket and operation only). SDK exceptions become the project's errors
via :func:`sdk_error` and :func:`citus_backup.runner.s3.translate` (5xx / unreachable:
TransientError; bad credentials / missing bucket: PermanentError).

Only the rule elements the SDK models survive a read-modify-write
(ID, Status, Filter Prefix/Tag/And, Expiration, Transition, Noncurrent*,
AbortIncompleteMultipartUpload); foreign rules using others (e.g. object size
filters) would lose them — acceptable for MinIO, noted in the docs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import urllib3
from minio import Minio
from minio.commonconfig import DISABLED, ENABLED, AndOperator, Filter, Tag, Tags
from minio.credentials.providers import StaticProvider
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.lifecycleconfig import (
    AbortIncompleteMultipartUpload,
    Expiration,
    LifecycleConfig,
    NoncurrentVersionExpiration,
    NoncurrentVersionTransition,
    Rule,
    Transition,
)

from citus_backup.errors import CitusBackupError
from citus_backup.runner.s3 import translate
from citus_backup.runner.s3api import S3ResponseError, S3UnexpectedResponse

#: Seconds to connect / to wait for an answer: the operator's handlers must not hang.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
#: A manifest larger than this is not one of ours (same bound as the runner's listing).
MANIFEST_LIMIT = 64 * 1024 * 1024

JsonRule = dict[str, Any]


@dataclass(frozen=True)
class S3Location:
    """Where and how to reach a bucket (from a policy's ``spec.storage``)."""

    endpoint: str
    bucket: str
    secure: bool = True
    region: str | None = None
    insecure_skip_verify: bool = False
    ca_file: str | None = None


# --------------------------------------------------------------------------- conversion


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _date(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _filter_to_json(flt: Filter | None) -> dict[str, Any]:
    if flt is None:
        return {}
    if flt.and_operator is not None:
        op = flt.and_operator
        body: dict[str, Any] = {}
        if op.prefix is not None:
            body["Prefix"] = op.prefix
        if op.tags:
            body["Tags"] = [{"Key": k, "Value": v} for k, v in op.tags.items()]
        return {"And": body}
    if flt.tag is not None:
        return {"Tag": {"Key": flt.tag.key, "Value": flt.tag.value}}
    return {"Prefix": flt.prefix or ""}


def rule_to_json(rule: Rule) -> JsonRule:
    """One SDK rule in the S3 API's JSON shape (empty parts omitted)."""
    result: JsonRule = {"ID": rule.rule_id, "Status": rule.status}
    result["Filter"] = _filter_to_json(rule.rule_filter)
    if rule.expiration is not None:
        exp = rule.expiration
        result["Expiration"] = {
            k: v
            for k, v in (
                ("Days", exp.days),
                ("Date", _iso(exp.date)),
                ("ExpiredObjectDeleteMarker", exp.expired_object_delete_marker),
            )
            if v is not None
        }
    if rule.abort_incomplete_multipart_upload is not None:
        result["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": rule.abort_incomplete_multipart_upload.days_after_initiation
        }
    if rule.noncurrent_version_expiration is not None:
        nve = rule.noncurrent_version_expiration
        result["NoncurrentVersionExpiration"] = {
            k: v
            for k, v in (
                ("NoncurrentDays", nve.noncurrent_days),
                ("NewerNoncurrentVersions", nve.newer_noncurrent_versions),
            )
            if v is not None
        }
    if rule.transition is not None:
        tr = rule.transition
        result["Transition"] = {
            k: v
            for k, v in (
                ("Days", tr.days),
                ("Date", _iso(tr.date)),
                ("StorageClass", tr.storage_class),
            )
            if v is not None
        }
    if rule.noncurrent_version_transition is not None:
        nvt = rule.noncurrent_version_transition
        result["NoncurrentVersionTransition"] = {
            k: v
            for k, v in (
                ("NoncurrentDays", nvt.noncurrent_days),
                ("StorageClass", nvt.storage_class),
                ("NewerNoncurrentVersions", nvt.newer_noncurrent_versions),
            )
            if v is not None
        }
    return result


def _filter_from_json(flt: Mapping[str, Any]) -> Filter:
    if "And" in flt:
        body = flt["And"]
        tags = Tags()
        for tag in body.get("Tags", []):
            tags[tag["Key"]] = tag["Value"]
        return Filter(and_operator=AndOperator(body.get("Prefix"), tags or None))
    if "Tag" in flt:
        return Filter(tag=Tag(flt["Tag"]["Key"], flt["Tag"]["Value"]))
    return Filter(prefix=str(flt.get("Prefix", "")))


def rule_from_json(rule: Mapping[str, Any]) -> Rule:
    """One rule in the S3 API's JSON shape as an SDK rule."""
    exp = rule.get("Expiration")
    abort = rule.get("AbortIncompleteMultipartUpload")
    nve = rule.get("NoncurrentVersionExpiration")
    tr = rule.get("Transition")
    nvt = rule.get("NoncurrentVersionTransition")
    return Rule(
        status=ENABLED if rule.get("Status", "Enabled") == "Enabled" else DISABLED,
        rule_id=rule.get("ID"),
        rule_filter=_filter_from_json(rule.get("Filter") or {"Prefix": ""}),
        expiration=None
        if exp is None
        else Expiration(
            date=_date(exp.get("Date")),
            days=exp.get("Days"),
            expired_object_delete_marker=exp.get("ExpiredObjectDeleteMarker"),
        ),
        abort_incomplete_multipart_upload=None
        if abort is None
        else AbortIncompleteMultipartUpload(abort.get("DaysAfterInitiation")),
        noncurrent_version_expiration=None
        if nve is None
        else NoncurrentVersionExpiration(
            nve.get("NoncurrentDays"), nve.get("NewerNoncurrentVersions")
        ),
        transition=None
        if tr is None
        else Transition(_date(tr.get("Date")), tr.get("Days"), tr.get("StorageClass")),
        noncurrent_version_transition=None
        if nvt is None
        else NoncurrentVersionTransition(
            nvt.get("NoncurrentDays"), nvt.get("StorageClass"), nvt.get("NewerNoncurrentVersions")
        ),
    )


# --------------------------------------------------------------------------- client
def sdk_error(exc: BaseException) -> BaseException:
    """The minio SDK's exceptions as the runner's S3 client raises them, so one
    :func:`~citus_backup.runner.s3.translate` classifies both."""
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 0
        return S3ResponseError(exc.code or "Error", exc.message or "", status)
    if isinstance(exc, ServerError):
        return S3UnexpectedResponse(exc.status_code, str(exc))
    if isinstance(exc, InvalidResponseError):
        return S3UnexpectedResponse(0, str(exc))
    return exc


def client_identity(location: S3Location, access_key: str, secret_key: str) -> str:
    """See :attr:`BucketClient.identity` (a digest: no secret in the value)."""
    return hashlib.sha256("\0".join((repr(location), access_key, secret_key)).encode()).hexdigest()


class BucketClient:
    """One bucket's lifecycle configuration and objects, errors translated."""

    def __init__(
        self,
        location: S3Location,
        access_key: str,
        secret_key: str,
        client: Minio | None = None,
    ) -> None:
        self.location = location
        self.bucket = location.bucket
        self._url = f"{'https' if location.secure else 'http'}://{location.endpoint}"
        self._identity = client_identity(location, access_key, secret_key)
        self.client = client or Minio(
            location.endpoint,
            secure=location.secure,
            region=location.region,
            credentials=StaticProvider(access_key, secret_key),
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
                cert_reqs="CERT_NONE" if location.insecure_skip_verify else "CERT_REQUIRED",
                ca_certs=location.ca_file or None,
                retries=urllib3.Retry(total=2, backoff_factor=0.5, status_forcelist=[502, 503]),
            ),
        )

    @property
    def identity(self) -> str:
        """Same value for two clients exactly when they reach the same bucket as the
        same user: lifecycle writes of such clients may be batched (a digest: the
        secret key is not kept in the value)."""
        return self._identity

    def _error(self, exc: BaseException, what: str) -> CitusBackupError:
        return translate(sdk_error(exc), f"{what} s3://{self.bucket}", self._url)

    def get_rules(self) -> list[JsonRule]:
        """The bucket's lifecycle rules (``[]`` when it has no configuration)."""
        try:
            config = self.client.get_bucket_lifecycle(self.bucket)
        except S3Error as exc:
            if exc.code == "NoSuchLifecycleConfiguration":
                return []
            raise self._error(exc, "read lifecycle configuration of") from exc
        except Exception as exc:
            raise self._error(exc, "read lifecycle configuration of") from exc
        return [rule_to_json(rule) for rule in (config.rules if config else [])]

    def put_rules(self, rules: Sequence[Mapping[str, Any]]) -> None:
        """Replace the configuration with ``rules``; an empty list deletes it."""
        try:
            if rules:
                config = LifecycleConfig([rule_from_json(rule) for rule in rules])
                self.client.set_bucket_lifecycle(self.bucket, config)
            else:
                self.client.delete_bucket_lifecycle(self.bucket)
        except Exception as exc:
            raise self._error(exc, "write lifecycle configuration of") from exc

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every object key under ``prefix``, recursively."""
        try:
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None and not obj.is_dir:
                    yield obj.object_name
        except Exception as exc:
            raise self._error(exc, f"list {prefix} in") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise self._error(exc, f"stat {key} in") from exc
        except Exception as exc:
            raise self._error(exc, f"stat {key} in") from exc
        return True

    def read(self, key: str, limit: int = MANIFEST_LIMIT) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
        except Exception as exc:
            raise self._error(exc, f"read {key} from") from exc
        try:
            data = response.read(limit + 1)
        finally:
            response.close()
            response.release_conn()
        if len(data) > limit:
            raise self._error(ValueError(f"{key} larger than {limit} bytes"), "read")
        return bytes(data)

    def object_sizes(self, prefix: str) -> dict[str, int]:
        """Key -> size of every object under ``prefix`` (one listing)."""
        try:
            return {
                str(obj.object_name): int(obj.size or 0)
                for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if obj.object_name is not None and not obj.is_dir
            }
        except Exception as exc:
            raise self._error(exc, f"list {prefix} in") from exc

    def uploaded_bytes(self, key: str) -> int:
        """Bytes of the parts uploaded so far to the multipart uploads in progress of ``key``.

        The SDK has no public call for this; the runner's uploads are multipart,
        and these two calls are the S3 API's own (ListMultipartUploads, ListParts).
        minio is pinned exactly, so the private names cannot move under us.
        """
        total = 0
        try:
            uploads = self.client._list_multipart_uploads(self.bucket, prefix=key)
            for upload in uploads.uploads:
                if upload.object_name != key or not upload.upload_id:
                    continue
                parts = self.client._list_parts(self.bucket, key, upload.upload_id)
                total += sum(int(part.size or 0) for part in parts.parts)
        except Exception as exc:
            raise self._error(exc, f"list the uploads of {key} in") from exc
        return total

    def remove_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (only for deleteDataOnPolicyDeletion)."""
        from minio.deleteobjects import DeleteObject  # noqa: PLC0415

        keys = list(self.list_keys(prefix))
        try:
            errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        except Exception as exc:
            raise self._error(exc, f"delete {prefix} in") from exc
        if errors:
            raise self._error(RuntimeError(f"{len(errors)} objects not deleted"), "delete in")
        return len(keys)
