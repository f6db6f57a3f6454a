# syntax=docker/dockerfile:1
# One Dockerfile for every image (the five services and the web client), chosen by a build
# argument:
#   docker build --build-arg SERVICE=auth -t ticketing/auth .
# skaffold.yaml builds them all: the `dev` stage for `skaffold dev` (editable, for file sync),
# the last stage for release. The release image holds the service and its dependencies only:
# no tests, no dev tools, no embedded servers, no uv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13 AS uv

# What every stage starts from: Python, the unprivileged user and the `service` command.
FROM ${PYTHON_IMAGE} AS base
ARG SERVICE
RUN test -n "${SERVICE}" || { echo "build with --build-arg SERVICE=<service>" >&2; exit 1; } \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home app \
 && ln -s "/app/.venv/bin/ticketing-${SERVICE}" /usr/local/bin/service
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8000
# `service migrate` applies the migrations (the Deployment's initContainer runs it);
# `service serve` runs the HTTP API with its outbox relay and event consumer.
ENTRYPOINT ["service"]
CMD ["serve", "--port", "8000"]

# Third-party dependencies first, from the lock alone: this layer is reused until uv.lock
# changes. Then the sources of the shared library and of the one service.
FROM base AS sources
ARG SERVICE
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-workspace --package "${SERVICE}"
COPY pyproject.toml uv.lock ./
COPY common common
COPY ${SERVICE} ${SERVICE}

# `skaffold dev`: the code installed editable from /src, owned by the user the container
# runs as, so skaffold's file sync can replace a file in place; and watchfiles, which restarts
# the server on such a change (the dev overlay's command). Only here: uvicorn would import it
# in every service merely because it is installed.
FROM sources AS dev
ARG SERVICE
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --group reload --package "${SERVICE}" \
 && chown -R app:app /src
USER 10001:10001

# Release: the shared library and the service installed as wheels (not editable).
FROM sources AS build
ARG SERVICE
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "${SERVICE}"

FROM base AS release
ARG SERVICE
LABEL org.opencontainers.image.title="ticketing-${SERVICE}"
COPY --from=build /app/.venv /app/.venv
USER 10001:10001
