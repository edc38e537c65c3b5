"""A running backup's progress read from real MinIO (clients.progress.BucketProgress):
what a run in flight has in the bucket — started.json, finished dumps, a multipart
upload with some parts — gives databases done/total and bytes so far."""

from __future__ import annotations

import io
import json
import uuid

from minio import Minio
from minio.datatypes import Part

from citus_backup.api.backup import CitusBackup
from citus_backup.api.policy import CitusBackupPolicy
from citus_backup.clients.progress import BucketProgress
from citus_backup.clients.s3 import BucketClient, S3Location
from localenv.minio import MinioInfo

PART = 5 * 1024 * 1024  # S3's smallest part that is not the last one


def test_progress_of_a_run_in_flight(minio: MinioInfo) -> None:
    bucket = f"progress-{uuid.uuid4().hex[:8]}"
    sdk = Minio(minio.endpoint, minio.access_key, minio.secret_key, secure=False)
    sdk.make_bucket(bucket)
    prefix = "p/daily/20261201T030000Z/"

    def put(key: str, data: bytes) -> None:
        sdk.put_object(bucket, prefix + key, io.BytesIO(data), len(data))

    put("started.json", json.dumps({"databases": ["app1", "app2", "app3"]}).encode())
    put("app1.dump", b"x" * 1000)
    upload_id = sdk._create_multipart_upload(bucket, prefix + "app2.dump", {})
    etags = [
        sdk._upload_part(bucket, prefix + "app2.dump", b"y" * PART, None, upload_id, n)
        for n in (1, 2)
    ]
    client = BucketClient(
        S3Location(endpoint=minio.endpoint, bucket=bucket, secure=False),
        minio.access_key,
        minio.secret_key,
    )
    policy = CitusBackupPolicy.model_validate(
        {
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "coordinator": {"host": "h", "passwordSecretRef": {"name": "s", "key": "k"}},
                "storage": {
                    "endpoint": minio.endpoint,
                    "bucket": bucket,
                    "prefix": "p",
                    "accessKeyIdSecretRef": {"name": "s", "key": "a"},
                    "secretAccessKeySecretRef": {"name": "s", "key": "b"},
                },
            },
        }
    )
    backup = CitusBackup.model_validate(
        {
            "metadata": {"name": "b", "namespace": "ns"},
            "spec": {"policyName": "p"},
            "status": {"phase": "Running", "location": {"bucket": bucket, "keyPrefix": prefix}},
        }
    )
    progress = BucketProgress(lambda _policy: client).backup(policy, backup)
    assert progress is not None
    assert progress.to_status() == {
        "databasesDone": 1,
        "databasesTotal": 3,
        "bytes": 1000 + 2 * PART,
    }
    # The upload completes: app2 counts as done, with its object's size.
    sdk._complete_multipart_upload(
        bucket,
        prefix + "app2.dump",
        upload_id,
        [Part(n, e) for n, e in zip((1, 2), etags, strict=True)],
    )
    progress = BucketProgress(lambda _policy: client).backup(policy, backup)
    assert progress is not None
    assert progress.to_status() == {
        "databasesDone": 2,
        "databasesTotal": 3,
        "bytes": 1000 + 2 * PART,
    }
    # Before started.json exists nothing is claimed.
    empty = backup.model_copy(
        update={"status": backup.status.model_copy(update={"location": None})}
    )
    assert BucketProgress(lambda _policy: client).backup(policy, empty) is None
