# The stratum image for `docker compose up`: CLI, API server and scheduler share it.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY lake lake
COPY sync sync
COPY jobs jobs
COPY api api
COPY benchmarks benchmarks
RUN pip install --no-cache-dir .
ENV STRATUM_HOME=/data STRATUM_LAKE_PATH=/data/lake
ENTRYPOINT ["stratum"]
