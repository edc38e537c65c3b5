"""Connection settings for PostgreSQL and S3, from the environment and flags.

In a Job pod, credentials arrive as environment variables from Secrets; argv
is visible to anyone who can list processes (and in the pod spec), so secrets
are read from the environment only and are kept out of ``repr``. PostgreSQL
settings use the standard libpq variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGSSLMODE, PGPASSFILE, ...), so every libpq option works without a
flag; flags override the few that commonly differ per run.

Parsing takes the environment as a mapping so it is unit-tested without
touching ``os.environ``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from citus_backup.errors import PermanentError

#: Seconds libpq waits for a connection when PGCONNECT_TIMEOUT is not set.
DEFAULT_CONNECT_TIMEOUT = "10"
#: libpq environment variables and their connection keywords.
LIBPQ_ENV = {
    "PGHOST": "host",
    "PGHOSTADDR": "hostaddr",
    "PGPORT": "port",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGPASSFILE": "passfile",
    "PGSERVICE": "service",
    "PGSERVICEFILE": "servicefile",
    "PGOPTIONS": "options",
    "PGAPPNAME": "application_name",
    "PGSSLMODE": "sslmode",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCRL": "sslcrl",
    "PGSSLMINPROTOCOLVERSION": "ssl_min_protocol_version",
    "PGREQUIRESSL": "requiressl",
    "PGGSSENCMODE": "gssencmode",
    "PGKRBSRVNAME": "krbsrvname",
    "PGCONNECT_TIMEOUT": "connect_timeout",
    "PGCLIENTENCODING": "client_encoding",
    "PGTARGETSESSIONATTRS": "target_session_attrs",
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def config_error(message: str) -> PermanentError:
    return PermanentError(message, reason="InvalidConfiguration")


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise config_error(f"{name}={value!r} is not a boolean (use true or false)")


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # host[:port], as the minio SDK takes it
    secure: bool
    bucket: str
    prefix: str = ""
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    insecure_skip_verify: bool = False

    @property
    def url(self) -> str:
        return ("https://" if self.secure else "http://") + self.endpoint


def parse_endpoint(value: str) -> tuple[str, bool | None]:
    """``https://minio:9000`` -> ``("minio:9000", True)``; ``minio:9000`` -> (.., None)."""
    if "://" not in value:
        if "/" in value:
            raise config_error(f"S3 endpoint {value!r} must be host[:port] or a URL without path")
        return value, None
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise config_error(f"S3 endpoint {value!r} must use http:// or https://")
    if parsed.path not in ("", "/") or parsed.query:
        raise config_error(f"S3 endpoint {value!r} must not have a path")
    return parsed.netloc, parsed.scheme == "https"


def s3_config(
    env: Mapping[str, str],
    *,
    endpoint: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
    secure: bool | None = None,
    ca_file: str | None = None,
    insecure_skip_verify: bool | None = None,
) -> S3Config:
    """Flags win over the environment (S3_*, then AWS_* for credentials)."""
    raw_endpoint = endpoint or _first(env, "S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if not raw_endpoint:
        raise config_error("S3 endpoint not set: set S3_ENDPOINT or pass --s3-endpoint")
    host, scheme_secure = parse_endpoint(raw_endpoint)
    if secure is None:
        secure_env = env.get("S3_SECURE")
        if secure_env is not None:
            secure = parse_bool("S3_SECURE", secure_env)
        else:
            secure = scheme_secure if scheme_secure is not None else True
    bucket = bucket or env.get("S3_BUCKET")
    if not bucket:
        raise config_error("S3 bucket not set: set S3_BUCKET or pass --bucket")
    access_key = _first(env, "S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    secret_key = _first(env, "S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    if bool(access_key) != bool(secret_key):
        raise config_error(
            "S3 credentials incomplete: set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY "
            "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if insecure_skip_verify is None:
        insecure_skip_verify = parse_bool("S3_INSECURE", env.get("S3_INSECURE", "false"))
    return S3Config(
        endpoint=host,
        secure=secure,
        bucket=bucket,
        prefix=prefix if prefix is not None else env.get("S3_PREFIX", ""),
        region=region or _first(env, "S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        access_key=access_key,
        secret_key=secret_key,
        session_token=_first(env, "S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
        ca_file=ca_file or env.get("S3_CA_FILE") or None,
        insecure_skip_verify=insecure_skip_verify,
    )


@dataclass(frozen=True)
class PgConfig:
    """libpq settings: the environment plus flag overrides.

    ``overrides`` maps libpq variable names (PGHOST, ...) to flag values.
    """

    base_env: Mapping[str, str] = field(repr=False)
    overrides: Mapping[str, str] = field(default_factory=dict)
    maintenance_db: str = "postgres"

    def child_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: the password stays in env."""
        env = dict(self.base_env)
        env.update(self.overrides)
        env.setdefault("PGCONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
        # The database is always given explicitly; never inherit one.
        env.pop("PGDATABASE", None)
        return env

    def connect_kwargs(self, database: str) -> dict[str, str]:
        """libpq keywords for an in-process (psycopg) connection to ``database``.

        Built from the same merged environment as :meth:`child_env`, so flags
        and the environment mean the same thing in-process and in children.
        """
        env = self.child_env()
        kwargs = {keyword: env[name] for name, keyword in LIBPQ_ENV.items() if env.get(name)}
        kwargs["dbname"] = database
        kwargs.setdefault("application_name", "citus-backup")
        return kwargs

    def setting(self, name: str, default: str = "") -> str:
        return self.overrides.get(name) or self.base_env.get(name) or default

    def describe(self) -> str:
        """``user@host:port`` for messages (never the password)."""
        host = self.setting("PGHOST", "localhost")
        port = self.setting("PGPORT", "5432")
        user = self.setting("PGUSER", self.base_env.get("USER", "?"))
        return f"{user}@{host}:{port}"

    def conninfo(self, database: str) -> str:
        """A conninfo string for ``database`` (quoted: any name is safe).

        Host, user, password, ... come from :meth:`child_env`, which libpq reads.
        """
        # Imported here: the operator imports this module (S3 settings) without psycopg.
        from psycopg.conninfo import make_conninfo  # noqa: PLC0415

        return make_conninfo("", dbname=database)


def pg_config(
    env: Mapping[str, str],
    *,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    sslmode: str | None = None,
    maintenance_db: str | None = None,
) -> PgConfig:
    overrides: dict[str, str] = {}
    if host:
        overrides["PGHOST"] = host
    if port:
        overrides["PGPORT"] = str(port)
    if user:
        overrides["PGUSER"] = user
    if sslmode:
        overrides["PGSSLMODE"] = sslmode
    return PgConfig(
        base_env=dict(env), overrides=overrides, maintenance_db=maintenance_db or "postgres"
    )
