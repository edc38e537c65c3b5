"""citus-backup-operator: back up a Citus (PostgreSQL) cluster into S3/MinIO and restore it."""

__version__ = "0.1.0"
