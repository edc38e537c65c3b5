"""The runner's own S3 client on real MinIO, cross-checked with the minio SDK.

The SDK (which the operator and these tests use) is an independent
implementation of the same protocol: what one writes the other must read
back byte for byte, under the same keys and with the same tags.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import urllib3
from minio import Minio as S3Client
from test_runner_support import new_bucket

from citus_backup.runner.s3api import Credentials, S3Api, S3ResponseError
from localenv.minio import MinioInfo

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
#: Keys a database name can turn into, and then some: SigV4 must encode each alike.
ODD_KEYS = [
    "p/daily/x/plain.dump",
    "p/daily/x/with space.dump",
    "p/daily/x/per%25cent.dump",
    "p/daily/x/plus+tilde~quote'dq\"amp&eq=.dump",
    "p/daily/x/ünïcødé-日本.dump",
]


def api_for(minio: MinioInfo, secret: str | None = None) -> S3Api:
    return S3Api(
        minio.endpoint,
        secure=False,
        credentials=Credentials(minio.access_key, secret or minio.secret_key),
        http=urllib3.PoolManager(retries=False),
    )


@pytest.fixture(scope="module")
def bucket(minio: MinioInfo) -> str:
    return new_bucket(minio, "s3api")


@pytest.fixture
def sdk(minio: MinioInfo) -> S3Client:
    return S3Client(minio.endpoint, minio.access_key, minio.secret_key, secure=False)


def test_odd_keys_round_trip_with_the_sdk(minio: MinioInfo, bucket: str, sdk: S3Client) -> None:
    api = api_for(minio)
    for number, key in enumerate(ODD_KEYS):
        api.put_object(bucket, key, f"body {number}".encode(), {"Content-Type": "text/plain"})
    listed = dict(api.list_objects(bucket, "p/daily/x/"))
    assert listed == {key: len(f"body {n}") for n, key in enumerate(ODD_KEYS)}
    assert {o.object_name for o in sdk.list_objects(bucket, "p/daily/x/", recursive=True)} == set(
        ODD_KEYS
    )
    for number, key in enumerate(ODD_KEYS):
        assert sdk.get_object(bucket, key).data == f"body {number}".encode()
        head = api.head_object(bucket, key)
        assert head is not None
        assert head[0] == len(f"body {number}")
        response = api.get_object(bucket, key, offset=2, length=3)
        assert response.read() == f"body {number}".encode()[2:5]
        response.release_conn()


def test_listing_pages(minio: MinioInfo, bucket: str) -> None:
    api = api_for(minio)
    for number in range(7):
        api.put_object(bucket, f"pages/{number}", b"x", {})
    assert [k for k, _ in api.list_objects(bucket, "pages/", page_size=2)] == [
        f"pages/{n}" for n in range(7)
    ]


def test_multipart_upload_and_copy(minio: MinioInfo, bucket: str, sdk: S3Client) -> None:
    api = api_for(minio)
    data = os.urandom(6 * MiB + 123)
    tagged = {"x-amz-tagging": "citusbackup.io%2Fexpirable=true"}
    upload_id = api.create_multipart(bucket, "mp/source", {"Content-Type": "x/y", **tagged})
    etags = [
        (1, api.upload_part(bucket, "mp/source", upload_id, 1, bytearray(data[: 5 * MiB]))),
        (2, api.upload_part(bucket, "mp/source", upload_id, 2, data[5 * MiB :])),
    ]
    assert [u.key for u in api.list_multipart_uploads(bucket, "mp/source")] == ["mp/source"]
    api.complete_multipart(bucket, "mp/source", upload_id, etags)
    assert hashlib.sha256(sdk.get_object(bucket, "mp/source").data).digest() == (
        hashlib.sha256(data).digest()
    )
    assert api.list_multipart_uploads(bucket, "mp/source") == []
    # The tag given when the upload started is on the object (the expirable
    # tag of every large dump depends on it).
    assert dict(sdk.get_object_tags(bucket, "mp/source") or {}) == {
        "citusbackup.io/expirable": "true"
    }

    # A multipart copy (S3's only way past 5 GiB), here in 5 MiB parts.
    api.copy_multipart(
        bucket, "mp/copy", "mp/source", size=len(data), part_size=5 * MiB, headers=tagged
    )
    assert sdk.get_object(bucket, "mp/copy").data == data
    assert api.get_tags(bucket, "mp/copy") == {"citusbackup.io/expirable": "true"}
    # A plain copy keeps the source's tags.
    api.copy_object(bucket, "mp/plain-copy", "mp/source")
    assert api.get_tags(bucket, "mp/plain-copy") == {"citusbackup.io/expirable": "true"}

    upload_id = api.create_multipart(bucket, "mp/aborted", {})
    assert [u.upload_id for u in api.list_multipart_uploads(bucket, "mp/aborted")] == [upload_id]
    api.abort_multipart(bucket, "mp/aborted", upload_id)
    # (MinIO lists uploads of one exact key only, whatever the prefix.)
    assert api.list_multipart_uploads(bucket, "mp/aborted") == []


def test_tags(minio: MinioInfo, bucket: str, sdk: S3Client) -> None:
    api = api_for(minio)
    api.put_object(bucket, "tags/o", b"x", {})
    assert api.get_tags(bucket, "tags/o") == {}
    api.put_tags(bucket, "tags/o", {"citusbackup.io/expirable": "true", "a b": "c+d=e"})
    assert api.get_tags(bucket, "tags/o") == {"citusbackup.io/expirable": "true", "a b": "c+d=e"}
    assert dict(sdk.get_object_tags(bucket, "tags/o") or {}) == {
        "citusbackup.io/expirable": "true",
        "a b": "c+d=e",
    }
    api.delete_tags(bucket, "tags/o")
    assert api.get_tags(bucket, "tags/o") == {}
    api.delete_object(bucket, "tags/o")
    assert api.head_object(bucket, "tags/o") is None


def test_errors_name_s3s_code(minio: MinioInfo, bucket: str) -> None:
    with pytest.raises(S3ResponseError) as wrong:
        next(iter(api_for(minio, secret="not-the-secret").list_objects(bucket, "")))
    assert (wrong.value.code, wrong.value.status) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(S3ResponseError) as missing:
        next(iter(api_for(minio).list_objects("no-such-bucket-here", "")))
    assert missing.value.code == "NoSuchBucket"
    api = api_for(minio)
    api.put_object(bucket, "etag/o", b"one", {})
    with pytest.raises(S3ResponseError) as changed:
        api.get_object(bucket, "etag/o", if_match="0123456789abcdef0123456789abcdef")
    assert changed.value.code == "PreconditionFailed"
    with pytest.raises(S3ResponseError) as no_key:
        api.get_object(bucket, "etag/none")
    assert no_key.value.code == "NoSuchKey"
