# syntax=docker/dockerfile:1
# One image for every workerpool process (dispatcher, scaler, reaper, agent, the simulated
# fleet, the CLI): docker-compose.yml builds it once and runs each service from it, so no
# container installs anything when it starts. Two stages: the package is built and installed
# into a virtualenv in the first, and only that virtualenv reaches the second, which runs as
# an unprivileged user.
#
#   docker build -t workerpool:local .
#   docker run --rm workerpool:local workerpool --help
#
# The base is pinned to an exact release (the Python the project is tested on); to pin it
# by content as well, append its digest (`docker buildx imagetools inspect <image>`):
# `--build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:…`.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# what the package is made of (.dockerignore keeps the rest out of the context)
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY dispatcher ./dispatcher
COPY scaler ./scaler
COPY reaper ./reaper
COPY agent ./agent
COPY sim ./sim
# the runtime dependencies only: moto (the [local] extra) is the compose file's own image
RUN python -m venv /opt/workerpool/venv \
 && /opt/workerpool/venv/bin/pip install . \
 && /opt/workerpool/venv/bin/workerpool --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="workerpool" \
      org.opencontainers.image.description="dispatcher, scaler, reaper, agent and CLI of workerpool" \
      org.opencontainers.image.licenses="Apache-2.0"
# the same name and no home, as the systemd units' User=workerpool
RUN groupadd --system --gid 10001 workerpool \
 && useradd --system --uid 10001 --gid workerpool --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin workerpool
COPY --from=build /opt/workerpool/venv /opt/workerpool/venv
ENV PATH=/opt/workerpool/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER workerpool:workerpool
WORKDIR /tmp
# each service names its process: python -m dispatcher | scaler | reaper | agent | sim.fleet
CMD ["workerpool", "--help"]
