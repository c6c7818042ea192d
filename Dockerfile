# syntax=docker/dockerfile:1
# One image for every `citystream` command (init, migrate, replay, process, sink, query,
# ingest): the entrypoint is the `citystream` console script, the command is its arguments.
#   docker build -t citystream:0.1.0 .
#   docker run --rm citystream:0.1.0 process
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

# --- build: a self-contained virtualenv in /opt/citystream ----------------------------------
FROM ${PYTHON_IMAGE} AS build
# Containers talk to a ClickHouse server (CITYSTREAM_CLICKHOUSE_URL=http(s)://...), so the
# embedded chDB engine (~0.9 GB with pandas and pyarrow, imported only for chdb:// URLs)
# is left out unless WITH_CHDB=true.
ARG WITH_CHDB=false
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/citystream
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY families/ families/
COPY citystream/ citystream/
COPY schemas/ schemas/
COPY streams/ streams/
COPY connectors/ connectors/
COPY infra/ infra/
COPY oracles/ oracles/
COPY api/ api/
COPY trust/ trust/
# Every dependency ships manylinux wheels, so no compiler is needed; bytecode is compiled
# here because the runtime image runs with a read-only root filesystem. The last line
# imports every command's modules, so a missing dependency fails the build.
RUN /opt/citystream/bin/pip install --no-compile . \
    && if [ "$WITH_CHDB" != "true" ]; then \
         /opt/citystream/bin/pip uninstall --yes chdb chdb-core pandas pyarrow numpy; \
       fi \
    && /opt/citystream/bin/pip uninstall --yes pip \
    && /opt/citystream/bin/python -m compileall -q -j 0 /opt/citystream/lib \
    && /opt/citystream/bin/python -c "import citystream.cli, core.kafka, citystream.query, connectors.sinks.clickhouse, connectors.sources.aarhus, streams.worker" \
    && /opt/citystream/bin/citystream --help > /dev/null

# --- runtime: slim, non-root ----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="citystream" \
      org.opencontainers.image.description="City events to KPIs: sources, Faust processors and the ClickHouse sink" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 citystream \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/citystream \
       --no-create-home --shell /usr/sbin/nologin citystream \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/citystream
COPY --from=build /opt/citystream /opt/citystream
# The shipped day of Aarhus traffic and the segment metadata, for `citystream replay`.
COPY data/aarhus/ /opt/citystream/data/aarhus/
COPY cities/ /opt/citystream/cities/
# The shipped contracts (docs/statements.md): citystream statement issue --contract FILE.
COPY contracts/ /opt/citystream/contracts/
# The data dir is the working directory too: Faust keeps its `<app id>-data` folder there.
# The processor's web server (stats, probes), the HTTP ingest and /metrics must listen beyond
# loopback in a container.
ENV PATH=/opt/citystream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/citystream \
    CITYSTREAM_DATA_DIR=/var/lib/citystream \
    CITYSTREAM_PROCESSOR_WEB_HOST=0.0.0.0 \
    CITYSTREAM_INGEST_HTTP_HOST=0.0.0.0 \
    CITYSTREAM_METRICS_HOST=0.0.0.0
WORKDIR /var/lib/citystream
USER 10001:10001
# 6066: processor web (GET /citystream/stats/); 8090: HTTP ingest (GET /health, /ready);
# 8124: the sink's query endpoint (chDB mode only, on loopback).
EXPOSE 6066 8090
# Probes differ per command, so they live with each deployment (helm chart, compose file).
ENTRYPOINT ["citystream"]
CMD ["--help"]
