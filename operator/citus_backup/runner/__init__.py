"""The program the operator's Jobs run: ``citus-backup backup``, ``restore`` and ``list``.

It replaces a shell script (``pg_dump > file; aws s3 cp; rm``) with a runner
that streams every dump straight into an S3 multipart upload, records what it
wrote in a manifest written last, and restores through a temporary database so
that a failed restore never leaves a target half-restored.

Pure logic (key layout, part sizes, manifest model, TOC parsing, database
selection, summaries, SQL composition) lives in modules without I/O so it can
be unit-tested in milliseconds; :mod:`.pg`, :mod:`.s3`, :mod:`.backup`,
:mod:`.restore` and :mod:`.listing` do the I/O.
"""
