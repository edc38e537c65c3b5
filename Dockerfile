# One non-root image for the operator and the backup/restore runner its Jobs
# execute. pg_dump must be at least the server's major version (the runner
# refuses an older one before dumping anything), so the client comes from the
# Debian release that ships the major wanted:
#   default                                          bookworm, PostgreSQL 15 client
#   --build-arg DEBIAN_SUITE=trixie --build-arg PG_MAJOR=17   for servers 15, 16, 17
# (Debian ships no 16; a 17 client dumps 16 and 15. The two cannot share one
# image: trixie's client needs trixie's libc.)
#
# The base is plain debian:<suite>-slim so the image can be built where no
# registry is reachable (the e2e tier imports a debootstrapped bookworm under
# exactly this name and tag).
ARG DEBIAN_SUITE=bookworm
FROM debian:${DEBIAN_SUITE}-slim
ARG PG_MAJOR=15

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv postgresql-client-${PG_MAJOR} ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A passwd entry for the runtime user: libpq and getpass look the UID up
# (pg_dump's default user name, kopf's default identity) and fail without one.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin nonroot

# Dependencies (and the pinned build backend) first, in their own layer: it
# changes only with pyproject.toml, so a change to the code rebuilds just the
# small layer below, offline.
COPY pyproject.toml /src/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md /src/
COPY operator /src/operator
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
      --no-build-isolation /src \
 && rm -rf /src

# 65532 is the conventional "nonroot" UID; the restricted Pod Security
# Standard needs a non-root user, and the pods run with a read-only root
# filesystem (no .pyc writes) and an emptyDir on /tmp.
USER 65532:65532
# MALLOC_ARENA_MAX: glibc gives each thread that allocates its own malloc arena
# (up to 8 per CPU) and rarely returns their free pages; the operator's worker
# threads made its memory grow by ~40 MB at 1,000 policies with nothing to do
# (bench/scale.py). Two arenas keep it flat; the runner is unaffected (its
# threads wait on I/O, the work is in pg_dump and pg_restore processes).
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
ENTRYPOINT ["citus-backup"]
CMD ["operator"]
