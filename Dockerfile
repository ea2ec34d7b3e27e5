# raysplit: Ray (with Serve's HAProxy fast path), MLflow and the raysplit package in one
# slim image, run as a non-root user. The same image is the Ray head, a Ray worker and
# the MLflow server in docker-compose.yml, and the KubeRay RayService's image.
# Build:  docker build -t raysplit:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/raysplit
ENV PATH=/opt/raysplit/bin:$PATH
COPY pyproject.toml README.md ./
COPY raysplit ./raysplit
COPY serve_app ./serve_app
COPY tune ./tune
RUN pip install .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="raysplit" \
      org.opencontainers.image.description="Ray Serve A/B serving of MLflow-registered scikit-learn models" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/raysplit/raysplit"
RUN groupadd --system --gid 1000 raysplit \
 && useradd --system --uid 1000 --gid raysplit --create-home --home-dir /home/raysplit raysplit \
 && mkdir -p /data /mlartifacts \
 && chown raysplit:raysplit /data /mlartifacts
COPY --from=build /opt/raysplit /opt/raysplit
WORKDIR /app
COPY --chown=raysplit:raysplit serve_config.yaml ./
COPY --chown=raysplit:raysplit deploy ./deploy
COPY --chown=raysplit:raysplit tune/configs ./tune/configs
ENV PATH=/opt/raysplit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAYSPLIT_HOME=/data \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_AUTH_MODE=token
USER 1000:1000
# ingress, Ray dashboard, GCS, metrics export, MLflow (when run as the tracking server)
EXPOSE 8000 8265 6380 8080 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
CMD ["head"]
