"""A MinIO server on a free loopback port with generated root credentials.

``MINIO_SCANNER_SPEED=fastest`` makes lifecycle expiry observable within a
test instead of hours later.
"""

from __future__ import annotations

import secrets
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from localenv import binaries
from localenv.process import ManagedProcess, free_port


@dataclass
class MinioInfo:
    host: str
    port: int
    console_port: int
    access_key: str
    secret_key: str
    log_path: Path

    @property
    def endpoint(self) -> str:
        """``host:port``, as the minio SDK takes it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def console_url(self) -> str:
        return f"http://{self.host}:{self.console_port}"

    def mc_env(self, alias: str = "local") -> dict[str, str]:
        """Environment that defines an ``mc`` alias for this server."""
        return {f"MC_HOST_{alias}": f"http://{self.access_key}:{self.secret_key}@{self.endpoint}"}


@dataclass
class Minio:
    base_dir: Path
    log_dir: Path
    die_with_parent: bool = True
    port: int = field(default_factory=free_port)
    console_port: int = field(default_factory=free_port)
    access_key: str = field(default_factory=lambda: "admin-" + secrets.token_hex(4))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Listen address: loopback, or a local node's bridge address so pods reach it.
    host: str = "127.0.0.1"
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def info(self) -> MinioInfo:
        return MinioInfo(
            self.host,
            self.port,
            self.console_port,
            self.access_key,
            self.secret_key,
            self.log_dir / "minio.log",
        )

    def start(self) -> MinioInfo:
        exe = binaries.binary("minio")
        data = self.base_dir / "minio-data"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.base_dir),
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_SCANNER_SPEED": "fastest",
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
        }
        self.process = ManagedProcess(
            "minio",
            [
                str(exe),
                "server",
                str(data),
                "--quiet",
                "--address",
                f"{self.host}:{self.port}",
                "--console-address",
                f"{self.host}:{self.console_port}",
            ],
            self.log_dir / "minio.log",
            env=env,
            die_with_parent=self.die_with_parent,
        )
        self.process.start()
        url = f"http://{self.host}:{self.port}/minio/health/ready"
        self.process.wait_ready(lambda: urllib.request.urlopen(url, timeout=2).status == 200)
        return self.info

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.base_dir / "minio-data", ignore_errors=True)
