"""Throw-away servers for the benchmark, built on ``hack/localenv``.

* :class:`CachedPostgres` is localenv's PostgreSQL whose data directory is kept
  between runs (generating a few GB with ``pgbench -i`` takes minutes): it is
  created once per scale, marked complete only after the data set is fully
  generated, and reused (no initdb) afterwards. Its password is stored next to
  it (mode 0600) because initdb baked it into the cluster.
* :class:`MetricsMinio` is localenv's MinIO with its Prometheus endpoint open
  (``MINIO_PROMETHEUS_AUTH_TYPE=public``), so the benchmark can read the bytes
  MinIO sent and received (``minio_api_requests_traffic_*_bytes``) around each step.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from localenv import binaries
from localenv.minio import Minio, MinioInfo
from localenv.postgres import Postgres, PostgresInfo, pg_bindir
from localenv.process import ManagedProcess

COMPLETE_MARKER = ".bench-complete"
PASSWORD_FILE = "bench-password"  # noqa: S105 - a file name


def _traversable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can reach ``path`` (x on every ancestor), from mode bits."""
    try:
        ids = pwd.getpwnam(user)
    except KeyError:
        return True
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        info = parent.stat()
        if info.st_uid == ids.pw_uid:
            ok = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid == ids.pw_gid:
            ok = bool(info.st_mode & stat.S_IXGRP)
        else:
            ok = bool(info.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


def data_cache_root() -> Path:
    """Where generated PostgreSQL data sets are kept between runs.

    ``$CITUS_BACKUP_BENCH_DATA`` if set; else the project's binary cache
    (``~/.cache/citus-backup-operator``), unless PostgreSQL cannot reach it: as
    root the server runs as ``postgres``, and ``/root`` is usually 0700, so
    then ``/var/tmp/citus-backup-operator`` is used (we do not loosen /root).
    """
    override = os.environ.get("CITUS_BACKUP_BENCH_DATA")
    if override:
        return Path(override)
    preferred = binaries.cache_dir()
    if os.geteuid() != 0 or _traversable_by(preferred, "postgres"):
        return preferred
    return Path("/var/tmp/citus-backup-operator")  # noqa: S108 - persistent, root-owned


@dataclass
class CachedPostgres(Postgres):
    """localenv's Postgres with a persistent, reusable data directory."""

    keep_data: bool = True
    reused: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        stored = self.base_dir / PASSWORD_FILE
        if self.complete and stored.exists():
            self.password = stored.read_text().strip()

    @property
    def complete(self) -> bool:
        return (self.base_dir / COMPLETE_MARKER).exists() and (
            self.data_dir / "PG_VERSION"
        ).exists()

    def mark_complete(self) -> None:
        (self.base_dir / COMPLETE_MARKER).write_text("generated\n")

    def start(self) -> PostgresInfo:
        if not self.complete:
            # A half-generated data set (interrupted run) is discarded.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            (self.base_dir / COMPLETE_MARKER).unlink(missing_ok=True)
            stored = self.base_dir / PASSWORD_FILE
            stored.write_text(self.password + "\n")
            stored.chmod(0o600)
            return super().start()
        self.reused = True
        return self._start_existing()

    def _start_existing(self) -> PostgresInfo:
        bindir = pg_bindir()
        user = self._user()
        socket_dir = self.base_dir / "socket"
        socket_dir.mkdir(exist_ok=True)
        if user is not None:
            ids = pwd.getpwnam(user)
            os.chown(socket_dir, ids.pw_uid, ids.pw_gid)
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)  # after a hard kill
        self.process = ManagedProcess(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D", str(self.data_dir),
                "-p", str(self.port),
                "-k", str(socket_dir),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ],
            self.log_dir / "postgres.log",
            user=user,
            die_with_parent=self.die_with_parent,
        )  # fmt: skip
        self.process.start()
        isready = bindir / "pg_isready"
        self.process.wait_ready(
            lambda: (
                subprocess.run(
                    [str(isready), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
                ).returncode
                == 0
            )
        )
        return self.info

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class MetricsMinio(Minio):
    """localenv's MinIO plus a public Prometheus endpoint."""

    def start(self) -> MinioInfo:
        exe = binaries.binary("minio")
        data = self.base_dir / "minio-data"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.base_dir),
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
            "MINIO_PROMETHEUS_AUTH_TYPE": "public",
        }
        self.process = ManagedProcess(
            "minio",
            [
                str(exe), "server", str(data), "--quiet",
                "--address", f"127.0.0.1:{self.port}",
                "--console-address", f"127.0.0.1:{self.console_port}",
            ],
            self.log_dir / "minio.log",
            env=env,
            die_with_parent=self.die_with_parent,
        )  # fmt: skip
        self.process.start()
        url = f"http://127.0.0.1:{self.port}/minio/health/ready"
        self.process.wait_ready(lambda: urllib.request.urlopen(url, timeout=2).status == 200)
        return self.info

    def version(self) -> str:
        out = subprocess.run(
            [str(binaries.binary("minio")), "--version"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


#: MinIO's v3 request metrics are computed per scrape; the v2 cluster and
#: node endpoints (``/minio/v2/metrics/cluster|node``, ``minio_s3_traffic_*``)
#: cache their values for ~10 s, too coarse to bracket one step.
API_METRICS = "/minio/metrics/v3/api/requests"
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def minio_metrics(info: MinioInfo, path: str = API_METRICS) -> dict[str, float]:
    """Prometheus metrics of MinIO, summed over label sets: name -> value."""
    with urllib.request.urlopen(info.url + path, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is None or line.startswith("#"):
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


def s3_traffic(info: MinioInfo) -> tuple[float, float]:
    """(bytes MinIO received, bytes MinIO sent) over S3 so far."""
    metrics = minio_metrics(info)
    return (
        metrics.get("minio_api_requests_traffic_received_bytes", 0.0),
        metrics.get("minio_api_requests_traffic_sent_bytes", 0.0),
    )


class S3Trace:
    """``mc admin trace --json`` while a step runs: S3 requests by object.

    Its output goes to a pipe read into memory (no local file is written).
    """

    def __init__(self, info: MinioInfo, config_dir: Path) -> None:
        self._env = dict(os.environ)
        self._env.update(info.mc_env("bench"))
        self._env["MC_CONFIG_DIR"] = str(config_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[bytes] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> S3Trace:
        mc = binaries.binary("mc")
        self._proc = subprocess.Popen(
            [str(mc), "admin", "trace", "--json", "bench"],
            env=self._env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(1.0)  # the trace subscription must be in place before the step
        return self

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line)

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # let the last events arrive
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)

    def by_object(self, bucket: str) -> dict[str, dict[str, int]]:
        """``key -> {"requests": n, "sentBytes": tx, "receivedBytes": rx}``."""
        out: dict[str, dict[str, int]] = {}
        for raw in self._lines:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            path = str(event.get("path", ""))
            prefix = f"/{bucket}/"
            key = path[len(prefix) :] if path.startswith(prefix) else path
            stats = event.get("callStats") or {}
            entry = out.setdefault(key, {"requests": 0, "sentBytes": 0, "receivedBytes": 0})
            entry["requests"] += 1
            entry["sentBytes"] += int(stats.get("tx", 0))
            entry["receivedBytes"] += int(stats.get("rx", 0))
        return out
