# syntax=docker/dockerfile:1
# One Dockerfile for every service image, chosen by a build argument:
#   docker build --build-arg SERVICE=auth -t ticketing/auth .
# (skaffold.yaml builds all five.) The image holds the service and its dependencies only:
# no tests, no dev tools, no embedded servers.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13 AS uv

FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
RUN test -n "${SERVICE}" || { echo "build with --build-arg SERVICE=<service>" >&2; exit 1; }
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Third-party dependencies first, from the lock alone: this layer is reused until uv.lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-workspace --package "${SERVICE}"
# Then the shared library and the service itself, installed as wheels (not editable).
COPY pyproject.toml uv.lock ./
COPY common common
COPY ${SERVICE} ${SERVICE}
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "${SERVICE}" \
 && ln -s "/app/.venv/bin/ticketing-${SERVICE}" /app/.venv/bin/service

FROM ${PYTHON_IMAGE}
ARG SERVICE
LABEL org.opencontainers.image.title="ticketing-${SERVICE}"
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --no-create-home app
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
# `service migrate` applies the migrations (the Deployment's initContainer runs it);
# `service serve` runs the HTTP API with its outbox relay and event consumer.
ENTRYPOINT ["service"]
CMD ["serve", "--port", "8000"]
