# syntax=docker/dockerfile:1
#
# Copilot Proxy Insight: mitmproxy with the exporter addon.
#
#   docker build -t copilot-proxy-insight .
#   docker run -d --name copilot-proxy -p 8080:8080 -p 127.0.0.1:9180:9180 \
#     -v copilot-data:/data -v copilot-ca:/home/app/.mitmproxy copilot-proxy-insight
#
# Ports: 8080 the proxy (IDEs connect here), 9180 Prometheus /metrics and the open /healthz.
# Volumes: /data the data dir (daily summaries, JSON event log, recordings); /home/app/.mitmproxy the
# mitmproxy CA (keep it: clients trust this CA, a new one means redistributing it to every client).
#
# Configuration: the COPILOT_* environment variables below (container layout, read by the entrypoint;
# COPILOT_LISTEN_HOST=0.0.0.0 because the console script's own default, loopback, is unreachable from outside)
# and mitmproxy `--set <option>=<value>` arguments (the command; the default asks every client for a proxy
# user so usage is attributed, e.g. replace it with `--set proxyauth=@/etc/copilot/htpasswd`).
# docs/admin-guide.md lists every option.

ARG PYTHON_IMAGE=python:3.13-slim-bookworm

# --- build: a wheel of the project plus wheels of all its dependencies --------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
# exporter/bundled/ links to these two: the dashboards and alert rules ship inside the package.
COPY alerts/ alerts/
COPY dashboards/ dashboards/
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

# --- runtime: slim Python, the wheels installed offline, a non-root user ------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="copilot-proxy-insight" \
      org.opencontainers.image.description="mitmproxy addon that turns GitHub Copilot traffic into Prometheus metrics, JSON logs and daily usage summaries" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/app \
    COPILOT_DATA_DIR=/data \
    COPILOT_LOG_JSON=both \
    COPILOT_LISTEN_HOST=0.0.0.0 \
    COPILOT_METRICS_HOST=0.0.0.0 \
    COPILOT_METRICS_PORT=9180

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data /home/app/.mitmproxy \
    && chown app:app /data /home/app/.mitmproxy

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-index /wheels/*.whl

USER 10001:10001
WORKDIR /home/app
VOLUME ["/data", "/home/app/.mitmproxy"]
EXPOSE 8080 9180

# /healthz answers 200 "ok" even when /metrics needs basic auth. With TLS on /metrics
# (copilot_metrics_certfile) set COPILOT_HEALTHCHECK_URL=https://127.0.0.1:9180/healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; url = os.environ.get('COPILOT_HEALTHCHECK_URL') or 'http://127.0.0.1:%s/healthz' % os.environ.get('COPILOT_METRICS_PORT', '9180'); urllib.request.urlopen(url, timeout=4, context=ssl._create_unverified_context())"]

# mitmdump handles SIGTERM (docker stop) by shutting down cleanly: the daily summary is written and
# the event log flushed. `exec` makes it PID 1's replacement, so it receives the signal.
ENTRYPOINT ["/bin/sh", "-c", "exec copilot-proxy-insight --set \"listen_host=$COPILOT_LISTEN_HOST\" --set \"copilot_data_dir=$COPILOT_DATA_DIR\" --set \"copilot_log_json=$COPILOT_LOG_JSON\" --set \"copilot_metrics_host=$COPILOT_METRICS_HOST\" --set \"copilot_metrics_port=$COPILOT_METRICS_PORT\" \"$@\"", "copilot-proxy-insight"]
CMD ["--set", "proxyauth=any"]
