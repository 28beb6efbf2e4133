# syntax=docker/dockerfile:1
# broker: build with `docker build -t broker .`; see docs/operations.md for running it.

# --- builder: install broker and its dependencies into a virtual environment -------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/broker
WORKDIR /src
# README.md is the package's readme in pyproject.toml, so the build needs it.
COPY pyproject.toml README.md ./
COPY broker ./broker
# A regular (non-editable) install: the runtime stage copies only /opt/broker.
RUN /opt/broker/bin/pip install .

# --- runtime: the virtual environment, the migrations, a non-root user ------------------------------
FROM python:3.11-slim

RUN groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin broker

# Same path as in the builder: the venv's scripts point at /opt/broker/bin/python.
COPY --from=builder /opt/broker /opt/broker
# broker looks for the Alembic scripts next to its package unless told otherwise; a regular install
# puts the package in site-packages, so name the directory explicitly.
COPY migrations /app/migrations

ENV PATH=/opt/broker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BROKER_ENV=production \
    BROKER_HOST=0.0.0.0 \
    BROKER_PORT=8000 \
    BROKER_MIGRATIONS_DIR=/app/migrations

WORKDIR /app
USER broker:broker
EXPOSE 8000

# No curl in the slim image: ask /healthz with Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BROKER_PORT', '8000'), timeout=4)"]

# Apply migrations (under an advisory lock, so replicas may start together), then serve. `exec` makes
# the server PID 1 so it receives SIGTERM. Arguments given to `docker run` go to `broker serve`
# (for example `--workers 4`).
ENTRYPOINT ["sh", "-c", "broker migrate && exec broker serve --no-migrate \"$@\"", "broker"]
