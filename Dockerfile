# reach's image: one image for `reach worker`, `reach api` and `reach exporter`.
# Multi-stage: wheels are built (durable-rules is a C extension) in a stage with a compiler,
# and only the wheels reach the runtime stage, which runs as an unprivileged user.
#   docker build -t reach .
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.cfg pyproject.toml ./
COPY reach reach
COPY streams streams
COPY agents agents
COPY rules rules
COPY models models
COPY channels channels
COPY api api
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN groupadd --gid 10001 reach \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin reach
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels reach \
 && rm -rf /wheels
# The example rules and channels as defaults; Kubernetes mounts the real ones
# (REACH_RULES_DIR, REACH_CHANNELS_FILE).
COPY --chown=10001:10001 rules/examples /etc/reach/rules
COPY --chown=10001:10001 deploy/config/channels.yaml /etc/reach/channels/channels.yaml
ENV REACH_RULES_DIR=/etc/reach/rules REACH_CHANNELS_FILE=/etc/reach/channels/channels.yaml \
    REACH_DATA_DIR=/var/lib/reach
RUN install -d -o 10001 -g 10001 /var/lib/reach
USER 10001:10001
EXPOSE 8080 9464 9465
ENTRYPOINT ["reach"]
CMD ["worker"]
