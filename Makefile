# plugin-reconciler — every target is listed by `make help`.
SHELL := /bin/bash
GO    ?= go
PKGS  := ./...
# Run again under the race detector in make test: every package whose tests
# start no Temporal server (a race build of the server would take minutes).
RACE_PKGS := ./activities/ ./workflows/ ./internal/bundle/... ./internal/catalog/ ./internal/eic/ \
	./internal/fleet/... ./internal/onbox/ ./internal/reconcile/ ./internal/store/

.DEFAULT_GOAL := help
DEMO_FLAGS ?=
BENCH_FLAGS ?=
FUZZTIME ?= 10m
STATICCHECK := v0.8.2

.PHONY: help deps test test-short test-faults fuzz lint demo worker bench

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install what the tests and the demo need (openssh-server, curl; the box login user)
	@command -v /usr/sbin/sshd >/dev/null && command -v curl >/dev/null && command -v flock >/dev/null || { \
	  echo "installing openssh-server curl util-linux"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server curl util-linux >/dev/null; }
	@if [ "$$(id -u)" = 0 ]; then \
	  id pluginbox >/dev/null 2>&1 || useradd --system --create-home --shell /bin/sh pluginbox; \
	  usermod -p '*' pluginbox; \
	fi
	@test -x /usr/lib/postgresql/15/bin/initdb || { \
	  echo "installing postgresql-15"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null; }

test: deps lint ## run every test: lint, unit, integration, end to end (starts what they need); the packages below the Temporal server also under the race detector
	$(GO) test -count=1 -race -timeout 20m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 45m $(PKGS)

test-faults: deps ## run the full fault suite (20 worker-crash trials, 200 interleaving schedules) and write docs/faults.md
	FAULTS_TRIALS=20 CHECKER_SCHEDULES=200 CHECKER_LANES=2 FAULTS_REPORT=$(CURDIR)/docs/faults.md $(GO) test -count=1 -timeout 180m -v ./internal/faults/

fuzz: ## fuzz the bundle check against the box's tar for FUZZTIME (default 10m); make test runs its corpus
	$(GO) test -run '^$$' -fuzz '^FuzzInspect$$' -fuzztime $(FUZZTIME) ./internal/bundle/

test-short: ## run the tests that start no external processes
	$(GO) test -count=1 -short $(PKGS)

lint: ## go vet, gofmt and staticcheck (pinned, run with go run: nothing to install)
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK) $(PKGS)

demo: deps ## run the scenario on the embedded stack (Temporal + Web UI, Postgres, simulated fleet); DEMO_FLAGS=--once to exit after the report
	$(GO) run ./internal/cmd/demo $(DEMO_FLAGS)

worker: ## run the worker against the Temporal and Postgres of your environment (TEMPORAL_ADDRESS, DATABASE_URL, ...)
	$(GO) run ./worker

# adaptivestackstart: the embedded server's SQLite runs deep stacks on fresh
# goroutines; without it ~9 % of the server's CPU went to growing stacks.
bench: deps ## fleet-scale benchmark on the real stack (ours, naive, floors); writes docs/benchmarks.md; BENCH_FLAGS=-workspaces=20 for a quick one
	GODEBUG=adaptivestackstart=1 $(GO) run ./internal/cmd/bench $(BENCH_FLAGS)
	$(GO) test -run '^$$' -bench . -benchmem ./internal/bundle/
