"""Settings from environment and flags; secrets only from the environment."""

from __future__ import annotations

import pytest

from citus_backup.errors import PermanentError
from citus_backup.runner.config import parse_endpoint, pg_config, s3_config

ENV = {
    "S3_ENDPOINT": "minio.backup:9000",
    "S3_BUCKET": "backups",
    "S3_PREFIX": "prod",
    "S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "S3_SECRET_ACCESS_KEY": "s3cr3t-value",
}


def test_s3_from_environment() -> None:
    cfg = s3_config(ENV)
    assert (cfg.endpoint, cfg.secure, cfg.bucket, cfg.prefix) == (
        "minio.backup:9000",
        True,
        "backups",
        "prod",
    )
    assert cfg.access_key == "AKIAEXAMPLE"
    assert "s3cr3t" not in repr(cfg)
    assert "AKIAEXAMPLE" not in repr(cfg)


def test_flags_win_and_urls_set_tls() -> None:
    cfg = s3_config(ENV, endpoint="http://127.0.0.1:9000", bucket="other", prefix="")
    assert (cfg.endpoint, cfg.secure, cfg.bucket, cfg.prefix) == (
        "127.0.0.1:9000",
        False,
        "other",
        "",
    )
    assert s3_config({**ENV, "S3_SECURE": "false"}).secure is False
    assert s3_config(ENV, endpoint="https://s3.example.com").secure is True
    assert s3_config({**ENV, "S3_ENDPOINT": "https://x:1", "S3_SECURE": "false"}).secure is False


def test_aws_credentials_are_accepted() -> None:
    env = {k: v for k, v in ENV.items() if not k.startswith("S3_ACCESS") and "SECRET" not in k}
    env |= {"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B", "AWS_SESSION_TOKEN": "T"}
    cfg = s3_config(env)
    assert (cfg.access_key, cfg.secret_key, cfg.session_token) == ("A", "B", "T")


def test_tls_options() -> None:
    cfg = s3_config({**ENV, "S3_CA_FILE": "/etc/ca.pem", "S3_INSECURE": "true"})
    assert cfg.ca_file == "/etc/ca.pem"
    assert cfg.insecure_skip_verify is True
    assert s3_config(ENV, insecure_skip_verify=False).insecure_skip_verify is False


@pytest.mark.parametrize(
    "env",
    [
        {k: v for k, v in ENV.items() if k != "S3_ENDPOINT"},
        {k: v for k, v in ENV.items() if k != "S3_BUCKET"},
        {k: v for k, v in ENV.items() if k != "S3_SECRET_ACCESS_KEY"},
        {**ENV, "S3_INSECURE": "maybe"},
        {**ENV, "S3_ENDPOINT": "ftp://x"},
        {**ENV, "S3_ENDPOINT": "http://x/path"},
    ],
)
def test_bad_s3_settings_are_permanent_errors(env: dict[str, str]) -> None:
    with pytest.raises(PermanentError) as err:
        s3_config(env)
    assert err.value.reason == "InvalidConfiguration"
    assert "s3cr3t" not in str(err.value)


def test_parse_endpoint() -> None:
    assert parse_endpoint("h:1") == ("h:1", None)
    assert parse_endpoint("https://h:443/") == ("h:443", True)


def test_pg_flags_override_environment() -> None:
    env = {"PGHOST": "db", "PGPORT": "5432", "PGUSER": "u", "PGPASSWORD": "pw", "PGDATABASE": "x"}
    cfg = pg_config(env, host="other", port=6432)
    child = cfg.child_env()
    assert (child["PGHOST"], child["PGPORT"], child["PGUSER"]) == ("other", "6432", "u")
    assert child["PGPASSWORD"] == "pw"
    assert "PGDATABASE" not in child
    assert child["PGCONNECT_TIMEOUT"] == "10"
    kwargs = cfg.connect_kwargs('we"ird db')
    assert kwargs["host"] == "other"
    assert kwargs["dbname"] == 'we"ird db'
    assert cfg.describe() == "u@other:6432"
    assert "pw" not in repr(cfg)


def test_conninfo_quotes_database_names() -> None:
    cfg = pg_config({})
    assert cfg.conninfo("plain") == "dbname=plain"
    assert cfg.conninfo("we'ird db") == "dbname='we\\'ird db'"
    assert cfg.conninfo("postgresql://evil") != "postgresql://evil"
