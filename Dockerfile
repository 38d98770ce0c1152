# syntax=docker/dockerfile:1
# aggregator: the background service (`aggregator run`) in a small, non-root image.
#   docker build -t aggregator .
#   docker run --rm -v aggregator-data:/app/data aggregator
# Everything it needs at run time has wheels, so no compiler or -dev packages are installed.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AGGREGATOR_CONFIG=/app/config/aggregator.yaml \
    AGGREGATOR_SERVICE_HEARTBEAT_FILE=/tmp/aggregator.heartbeat

# The unprivileged user the service runs as (fixed uid/gid so volume ownership is predictable).
RUN groupadd --gid 10001 aggregator \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin aggregator

WORKDIR /app

# Install as the README does: `pip install -e .` from the project folder. Only the files the
# install reads (pyproject.toml, README.md, and aggregator/__init__.py for the version) are copied
# first, so the dependency layer is rebuilt when those change, not on every code edit. The
# editable install maps the `aggregator` package to /app/aggregator, which the next COPY fills in.
COPY pyproject.toml README.md ./
COPY aggregator/__init__.py aggregator/__init__.py
RUN pip install -e .
COPY aggregator/ aggregator/

# Default configuration, so the image runs without a mount (compose mounts ./config over it).
COPY config/ config/

# /app/data holds the SQLite database and the outbox by default; a named volume mounted there
# inherits this ownership the first time it is used.
RUN mkdir -p /app/data && chown aggregator:aggregator /app/data

USER 10001:10001

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["aggregator", "health"]

CMD ["aggregator", "run"]
