# citystream — the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CITYSTREAM := $(BIN)/citystream

.DEFAULT_GOAL := help
.PHONY: help install mosquitto chromium vendor demo test unit lint format typecheck bench stack-up stack-down stack-status clean docs asyncapi-tools soak

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install citystream with dev tools

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
mosquitto: ## install Debian's mosquitto (the MQTT broker of the stack and tests) if missing
	@if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then exit 0; fi; \
	  echo "mosquitto is missing: installing it with apt-get"; \
	  ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients) \
	  || { echo "error: could not install mosquitto (apt-get install -y mosquitto);" \
	       "the MQTT ingest tests need it" >&2; exit 1; }; \
	  [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null \
	  || { echo "error: mosquitto still missing after apt-get" >&2; exit 1; }

# The browser tests (tests/browser) drive Debian's chromium through its chromedriver.
chromium: ## install Debian's chromium and chromium-driver (the dashboard's browser tests) if missing
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	  echo "chromium or chromedriver is missing: installing them with apt-get"; \
	  ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	  || { echo "error: could not install chromium (apt-get install -y chromium chromium-driver);" \
	       "the dashboard's browser tests need it" >&2; exit 1; }; \
	  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] \
	  || { echo "error: chromium or chromedriver still missing after apt-get" >&2; exit 1; }

# The dashboard's libraries (Leaflet, uPlot) come from npm (web/package-lock.json) and are
# copied into the Python package (api/static/vendor/, committed, so a wheel or image needs no
# node); this rebuilds them when the lock file or the copy script changes.
VENDOR_MANIFEST := api/static/vendor/manifest.json
$(VENDOR_MANIFEST): web/package.json web/package-lock.json web/vendor.mjs
	@if ! command -v npm >/dev/null; then \
	  if [ -f $@ ]; then echo "npm missing: keeping the committed api/static/vendor/"; touch $@; exit 0; fi; \
	  echo "error: node and npm are needed to vendor the dashboard's libraries (node 20+)" >&2; exit 1; fi; \
	  npm ci --prefix web --no-audit --no-fund --silent && node web/vendor.mjs
vendor: $(VENDOR_MANIFEST) ## copy the dashboard's npm libraries into api/static/vendor/

demo: $(STAMP) vendor ## the whole pipeline on one day of real Aarhus traffic, KPIs printed
	$(CITYSTREAM) demo

# `make test` runs on a stack of its own: its own data directory and ports, emptied before
# and deleted after a green run. The stack of `make demo` and `citystream stack up`
# (./.citystream, ports 9092/8081/1883) never sees the tests' topics, and either command
# may run while the other's stack is up. The test stack also opens its SCRAM and
# SCRAM-over-TLS listeners (tests/integration/test_kafka_security.py).
TEST_STACK_DIR := $(CURDIR)/.citystream-test
# Three test processes (pytest-xdist) on 2 cores, one file each at a time: the integration
# tests wait on Kafka, Faust and the sink more than they compute (1,083 tests: 15m46s of
# tests with two processes, 12m58s with three), and every test has its own topic
# prefix, consumer groups, ports and chDB directory (tests/conftest.py), so files share
# the stack safely. Tests that stop a broker use one of their own (tests/private_kafka.py).
PYTEST_ARGS ?= -n 3 --dist loadfile
TEST_KAFKA_PORT ?= 19092
TEST_CONTROLLER_PORT ?= 19093
TEST_SCRAM_PORT ?= 19094
TEST_TLS_PORT ?= 19095
TEST_REGISTRY_PORT ?= 18081
TEST_MQTT_PORT ?= 11883
TEST_ENV := CITYSTREAM_DATA_DIR=$(TEST_STACK_DIR) \
  CITYSTREAM_KAFKA_PORT=$(TEST_KAFKA_PORT) \
  CITYSTREAM_CONTROLLER_PORT=$(TEST_CONTROLLER_PORT) \
  CITYSTREAM_KAFKA_SCRAM_PORT=$(TEST_SCRAM_PORT) \
  CITYSTREAM_KAFKA_TLS_PORT=$(TEST_TLS_PORT) \
  CITYSTREAM_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(TEST_KAFKA_PORT) \
  CITYSTREAM_REGISTRY_PORT=$(TEST_REGISTRY_PORT) \
  CITYSTREAM_SCHEMA_REGISTRY_URL=http://127.0.0.1:$(TEST_REGISTRY_PORT)/apis/ccompat/v7 \
  CITYSTREAM_MQTT_PORT=$(TEST_MQTT_PORT)

test: $(STAMP) mosquitto chromium vendor asyncapi-tools otel-receiver ## lint, then every test on a stack of its own (started, stopped and removed here)
	$(BIN)/ruff check .
	$(BIN)/mypy core citystream schemas streams connectors families infra oracles api trust
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory docs-site
	$(MAKE) --no-print-directory deploy-check
	-env $(TEST_ENV) $(CITYSTREAM) stack down > /dev/null 2>&1
	rm -rf $(TEST_STACK_DIR)
	env $(TEST_ENV) $(CITYSTREAM) stack up
	set -o pipefail; status=0; \
	  env $(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	  env $(TEST_ENV) $(CITYSTREAM) stack down; \
	  if [ $$status = 0 ]; then rm -rf $(TEST_STACK_DIR); \
	  else echo "test stack state kept for inspection in $(TEST_STACK_DIR) (make clean removes it)"; fi; \
	  exit $$status

unit: $(STAMP) asyncapi-tools ## unit tests only (no services)
	$(BIN)/pytest tests/unit -q

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core citystream schemas streams connectors families infra oracles api trust
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## throughput and latency on the real stack (7-day Aarhus file)
	$(CITYSTREAM) stack up
	status=0; $(CITYSTREAM) bench || status=$$?; $(CITYSTREAM) stack down; exit $$status

SOAK_MINUTES ?= 10
SOAK_FAULT_EVERY ?= 30
soak: $(STAMP) ## looped Aarhus traffic + the city simulator, a fault every SOAK_FAULT_EVERY s for SOAK_MINUTES, then verify (not in CI)
	$(CITYSTREAM) stack up
	status=0; $(CITYSTREAM) soak --minutes $(SOAK_MINUTES) --fault-every $(SOAK_FAULT_EVERY) || status=$$?; \
	  $(CITYSTREAM) stack down; exit $$status

stack-up: $(STAMP) ## start Kafka and the schema registry
	$(CITYSTREAM) stack up

stack-down: $(STAMP) ## stop them
	$(CITYSTREAM) stack down

stack-status: $(STAMP) ## are they up?
	$(CITYSTREAM) stack status

docs: $(STAMP) ## regenerate the generated docs: KPI catalogue, configuration table, docs/asyncapi.yaml
	$(CITYSTREAM) catalog kpis --write
	$(CITYSTREAM) catalog config --write
	$(CITYSTREAM) catalog period-rules --write
	$(CITYSTREAM) catalog asyncapi

# The documentation site: docs/*.md with MkDocs and Material (mkdocs.yml); --strict fails on
# a broken link or anchor between pages. Drafts in docs/pending/ are not published.
.PHONY: docs-site
docs-site: $(STAMP) ## build the documentation site into build/site (strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

clean: ## remove runtime state (not the download cache)
	-$(CITYSTREAM) stack down
	-env $(TEST_ENV) $(CITYSTREAM) stack down
	rm -rf .citystream $(TEST_STACK_DIR)

# --- deployment: Dockerfile, helm chart, compose file ------------------------------------
# helm and the Compose Specification's loader (compose-go) are built from their Go modules
# once into the tools cache; tests/deploy use the same binaries (exported below).
.PHONY: deploy-check helm-check compose-check dockerfile-lint image
GO ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
TOOLS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/citystream/tools
HELM_VERSION ?= v3.19.0
JAEGER_VERSION ?= v1.76.0
PROMETHEUS_VERSION ?= v0.316.0
COMPOSE_GO_VERSION ?= v2.16.2
KUBE_VERSION ?= 1.31.0
HELM ?= $(TOOLS_DIR)/helm-$(HELM_VERSION)/helm
COMPOSE_SPEC ?= $(TOOLS_DIR)/compose-go-$(COMPOSE_GO_VERSION)/compose-spec
JAEGER ?= $(TOOLS_DIR)/jaeger-$(JAEGER_VERSION)/jaeger
PROMTOOL ?= $(TOOLS_DIR)/promtool-$(PROMETHEUS_VERSION)/promtool
CHART := helm/citystream
export HELM COMPOSE_SPEC KUBE_VERSION JAEGER PROMTOOL

$(TOOLS_DIR)/helm-%/helm:
	@echo "building helm $* from its Go module (first time only, a few minutes)"
	mkdir -p $(@D) && GOBIN=$(@D) GOFLAGS=-buildvcs=false $(GO) install helm.sh/helm/v3/cmd/helm@$*

$(TOOLS_DIR)/compose-go-%/compose-spec:
	@echo "building the compose-spec loader $* from its Go module (first time only)"
	mkdir -p $(@D) && GOBIN=$(@D) GOFLAGS=-buildvcs=false $(GO) install github.com/compose-spec/compose-go/v2/cmd@$*
	mv $(@D)/cmd $@

# Jaeger v2 (an OpenTelemetry Collector distribution: OTLP in, traces queryable over HTTP)
# receives the spans of a real run in tests/integration/test_telemetry_otlp.py.
$(TOOLS_DIR)/jaeger-%/jaeger:
	@echo "building jaeger $* from its Go module (first time only, several minutes)"
	@# jaeger's go.mod has replace directives, so `go install pkg@version` refuses it: build it
	@# as a tool of a throwaway module instead (its replaces are then ignored).
	rm -rf $(@D).build && mkdir -p $(@D).build $(@D)
	cd $(@D).build && $(GO) mod init citystream-tools >/dev/null 2>&1 \
	  && GOFLAGS=-buildvcs=false $(GO) get -tool github.com/jaegertracing/jaeger/cmd/jaeger@$* \
	  && GOFLAGS=-buildvcs=false $(GO) build -o $@ github.com/jaegertracing/jaeger/cmd/jaeger
	rm -rf $(@D).build

.PHONY: otel-receiver
otel-receiver: $(JAEGER) ## build the OTLP receiver (Jaeger v2) the telemetry test exports to

# promtool checks infra/prometheus/citystream-alerts.yaml (tests/deploy/test_alert_rules.py).
$(TOOLS_DIR)/promtool-%/promtool:
	@echo "building promtool $* from its Go module (first time only, several minutes)"
	rm -rf $(@D).build && mkdir -p $(@D).build $(@D)
	cd $(@D).build && $(GO) mod init citystream-tools >/dev/null 2>&1 \
	  && GOFLAGS=-buildvcs=false $(GO) get -tool github.com/prometheus/prometheus/cmd/promtool@$* \
	  && GOFLAGS=-buildvcs=false $(GO) build -o $@ github.com/prometheus/prometheus/cmd/promtool
	rm -rf $(@D).build

.PHONY: rules-check
rules-check: $(PROMTOOL) ## promtool check rules on the shipped Prometheus alert rules
	$(PROMTOOL) check rules infra/prometheus/citystream-alerts.yaml
	cd infra/prometheus && $(PROMTOOL) test rules citystream-alerts.test.yaml

deploy-check: helm-check compose-check dockerfile-lint rules-check ## lint the chart, compose file and Dockerfile

helm-check: $(HELM) ## helm lint + helm template, default and full values
	$(HELM) lint $(CHART) --strict --kube-version $(KUBE_VERSION)
	$(HELM) lint $(CHART) --strict --kube-version $(KUBE_VERSION) -f $(CHART)/ci/full-values.yaml
	$(HELM) template citystream $(CHART) --kube-version $(KUBE_VERSION) > /dev/null
	$(HELM) template citystream $(CHART) --kube-version $(KUBE_VERSION) -f $(CHART)/ci/full-values.yaml > /dev/null

compose-check: $(COMPOSE_SPEC) ## load infra/compose.yaml with the Compose Specification's loader
	cd infra && $(COMPOSE_SPEC) compose.yaml > /dev/null
	@if docker compose version > /dev/null 2>&1; then \
	  echo "docker compose config"; docker compose -f infra/compose.yaml config --quiet; fi

dockerfile-lint: $(STAMP) ## hadolint the Dockerfile
	$(BIN)/hadolint Dockerfile

CONTAINER_TOOL ?= $(or $(shell command -v docker 2>/dev/null),podman)
image: ## build the container image citystream:<version> (docker or podman)
	$(CONTAINER_TOOL) build -t citystream:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) .

# --- AsyncAPI tooling: the official parser validates docs/asyncapi.yaml in the tests -----
# Installed with npm once into the tools cache; tests/unit/test_catalog.py runs it with node
# from ASYNCAPI_TOOLS and fails (never skips) when node or the packages are missing.
ASYNCAPI_PARSER_VERSION ?= 3.6.6
ASYNCAPI_AVRO_PARSER_VERSION ?= 3.1.0
ASYNCAPI_TOOLS ?= $(TOOLS_DIR)/asyncapi
ASYNCAPI_STAMP := $(ASYNCAPI_TOOLS)/.installed-$(ASYNCAPI_PARSER_VERSION)-$(ASYNCAPI_AVRO_PARSER_VERSION)
export ASYNCAPI_TOOLS

$(ASYNCAPI_STAMP):
	@command -v node >/dev/null && command -v npm >/dev/null \
	  || { echo "error: node and npm are needed to validate docs/asyncapi.yaml (node 20+)" >&2; exit 1; }
	mkdir -p $(ASYNCAPI_TOOLS)
	npm install --prefix $(ASYNCAPI_TOOLS) --no-audit --no-fund --save-exact \
	  @asyncapi/parser@$(ASYNCAPI_PARSER_VERSION) \
	  @asyncapi/avro-schema-parser@$(ASYNCAPI_AVRO_PARSER_VERSION)
	touch $@

asyncapi-tools: $(ASYNCAPI_STAMP) ## install the AsyncAPI parser (npm) into the tools cache
