"""The MinIO of the local environment is real: authentication, bucket
lifecycle configuration through the minio SDK (what the operator uses for
retention), and the ``mc`` client against the same server.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from minio import Minio as S3Client
from minio.commonconfig import ENABLED, Filter
from minio.error import S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from localenv.binaries import binary
from localenv.minio import Minio, MinioInfo
from localenv.process import StartError


def s3(minio: MinioInfo, secret_key: str | None = None) -> S3Client:
    return S3Client(minio.endpoint, minio.access_key, secret_key or minio.secret_key, secure=False)


def new_bucket(client: S3Client) -> str:
    name = f"envcheck-{uuid.uuid4().hex[:8]}"
    client.make_bucket(name)
    return name


def test_wrong_secret_key_is_rejected(minio: MinioInfo) -> None:
    with pytest.raises(S3Error) as err:
        s3(minio, secret_key="wrong-secret-key").list_buckets()
    assert err.value.code == "SignatureDoesNotMatch"


def test_bucket_lifecycle_round_trip(minio: MinioInfo) -> None:
    client = s3(minio)
    bucket = new_bucket(client)
    client.set_bucket_lifecycle(
        bucket,
        LifecycleConfig(
            [
                Rule(
                    ENABLED,
                    rule_filter=Filter(prefix="backups/daily/"),
                    rule_id="daily",
                    expiration=Expiration(days=7),
                ),
                Rule(
                    ENABLED,
                    rule_filter=Filter(prefix="backups/weekly/"),
                    rule_id="weekly",
                    expiration=Expiration(days=35),
                ),
            ]
        ),
    )
    got = client.get_bucket_lifecycle(bucket)
    assert got is not None
    rules = {
        r.rule_id: (r.status, r.rule_filter.prefix if r.rule_filter else None, r.expiration.days)
        for r in got.rules
        if r.expiration is not None
    }
    assert rules == {
        "daily": (ENABLED, "backups/daily/", 7),
        "weekly": (ENABLED, "backups/weekly/", 35),
    }
    client.delete_bucket_lifecycle(bucket)
    assert client.get_bucket_lifecycle(bucket) is None


def test_mc_sees_objects_and_lifecycle(minio: MinioInfo, tmp_path: Path) -> None:
    client = s3(minio)
    bucket = new_bucket(client)
    client.put_object(bucket, "backups/daily/base.dump", io.BytesIO(b"x" * 10), 10)
    client.set_bucket_lifecycle(
        bucket,
        LifecycleConfig(
            [Rule(ENABLED, Filter(prefix="backups/"), "retention", expiration=Expiration(days=3))]
        ),
    )
    # Only the alias from MC_HOST_local: no config file, no ~/.mc of the user.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **minio.mc_env("local")}
    mc = [str(binary("mc")), "--config-dir", str(tmp_path / "mc"), "--no-color"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*mc, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"mc {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    assert "backups/daily/base.dump" in run("ls", "--recursive", f"local/{bucket}")
    exported = json.loads(run("ilm", "rule", "export", f"local/{bucket}"))
    (rule,) = exported["Rules"]
    assert (rule["ID"], rule["Expiration"]["Days"]) == ("retention", 3)


def test_taken_port_fails_naming_minio_and_its_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = Minio(tmp_path / "minio", tmp_path / "logs", port=port)
        try:
            with pytest.raises(StartError) as err:
                server.start()
        finally:
            server.stop()
    message = str(err.value)
    assert message.startswith("minio: command `")
    assert str(tmp_path / "logs" / "minio.log") in message
    assert server.process is not None
    assert server.process.proc is not None
    assert server.process.proc.poll() is not None
