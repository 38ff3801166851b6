# One image for the exporter, the scaler and the demo's Celery app.
#
#   docker run IMAGE --broker-url redis://redis:6379/0            # the exporter (default)
#   docker run -e TASKQUEUE_EXPORTER_BROKER_URL IMAGE              # a URL with a password:
#                                                                  # from your environment, not ps
#   docker run --entrypoint taskqueue-scaler IMAGE run --config /etc/taskqueue/scaler.yml
#   docker run --entrypoint celery IMAGE -A demo.app worker -Q images     # a demo worker
#   docker run --entrypoint python IMAGE -m demo.load                      # the demo's load
FROM python:3.11-slim

# Logs reach `docker logs` at once; no .pyc files written as the unprivileged user.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The package is built from /src and installed into site-packages; /app holds only the
# demo, which is not part of the package and is imported from PYTHONPATH.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY scaler ./scaler
RUN pip install . && rm -rf build *.egg-info

WORKDIR /app
COPY demo ./demo
ENV PYTHONPATH=/app

USER nobody
EXPOSE 9808 9809
# The exporter by default, as before; the ECS task definitions in deploy/ecs and
# docker-compose.yml name the entry point of every other use explicitly.
ENTRYPOINT ["taskqueue-exporter"]
