# Sluice: `make run` starts the gateway on pipeline.conf; `make test` runs every test.
SWIFT ?= swift
CONFIG ?= pipeline.conf
PYTHON ?= /usr/bin/python3
BIN := .build/debug/sluice

.PHONY: all build release run test unit-test integration-test spf-suite bench check-config clean

all: build

build:
	scripts/install-deps.sh build
	SWIFT=$(SWIFT) scripts/build-checked.sh

release:
	scripts/install-deps.sh build
	$(SWIFT) build -c release

run:
	scripts/install-deps.sh run
	$(SWIFT) build
	$(BIN) run --config $(CONFIG)

check-config: build
	$(BIN) check-config --config $(CONFIG)

test:
	scripts/install-deps.sh test
	SWIFT=$(SWIFT) scripts/build-checked.sh --build-tests
	$(PYTHON) scripts/with-postgres.py $(SWIFT) test --skip-build
	scripts/fetch-spf-suite.sh
	SLUICE_BIN=$(CURDIR)/$(BIN) $(PYTHON) -m pytest -q -p no:cacheprovider Tests/integration

unit-test:
	$(SWIFT) build --build-tests
	$(PYTHON) scripts/with-postgres.py $(SWIFT) test --skip-build

integration-test: build
	scripts/fetch-spf-suite.sh
	SLUICE_BIN=$(CURDIR)/$(BIN) $(PYTHON) -m pytest -q -p no:cacheprovider Tests/integration

# The openspf RFC 7208 suite alone, with its summary and failures printed.
spf-suite: build
	scripts/fetch-spf-suite.sh
	SLUICE_BIN=$(CURDIR)/$(BIN) $(PYTHON) -m pytest -q -s -p no:cacheprovider Tests/integration/test_spf_conformance.py

bench:
	scripts/install-deps.sh bench
	$(SWIFT) build -c release
	SLUICE_BIN=$(CURDIR)/.build/release/sluice /usr/bin/python3 scripts/bench/bench.py

clean:
	rm -rf .build var
