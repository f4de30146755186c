# webhook-forwarder: the commands a user and CI run. See README.md.

CARGO      ?= cargo
PORT       ?= 8080
SINK_PORT  ?= 9000
# Extra flags for `make run`, e.g. make run ARGS='--batch-size 3 --batch-interval 5s'
ARGS       ?=

.PHONY: all build run test lint bench fuzz static docker-build coverage clean

VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
TRIPLE     := x86_64-unknown-linux-gnu

all: build

## build: release binaries of the service and the bundled receiver, in build/
build:
	$(CARGO) build --release --locked --bins
	mkdir -p build
	cp target/release/webhook-forwarder target/release/webhook-sink build/

## run: the service on :$(PORT), forwarding to the bundled receiver on $(SINK_PORT)
run: build
	@echo "webhook-sink on 127.0.0.1:$(SINK_PORT) prints every batch; webhook-forwarder listens on :$(PORT). Ctrl-C stops both."
	@./build/webhook-sink --listen 127.0.0.1:$(SINK_PORT) & sink=$$!; \
	trap 'kill $$sink 2>/dev/null' EXIT INT TERM; \
	./build/webhook-forwarder --http :$(PORT) --post-endpoint http://127.0.0.1:$(SINK_PORT)/ingest $(ARGS)

## test: unit and integration tests (needs curl)
test:
	$(CARGO) test --locked --all-targets

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## static: a statically linked release binary, runnable on scratch, in build/docker/
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --bin webhook-forwarder --target $(TRIPLE)
	mkdir -p build/docker/data
	cp target/$(TRIPLE)/release/webhook-forwarder build/docker/webhook-forwarder
	strip build/docker/webhook-forwarder

## docker-build: the container image webhook-forwarder:$(VERSION) and :latest
docker-build: static
	docker build -t webhook-forwarder:$(VERSION) -t webhook-forwarder:latest .

## coverage: line coverage of src/, unit and integration tests (the spawned service
## binaries included), as a summary and as HTML in target/coverage/
coverage:
	command -v cargo-tarpaulin >/dev/null || $(CARGO) install cargo-tarpaulin --locked
	$(CARGO) tarpaulin --engine llvm --skip-clean --target-dir target/coverage-build \
	  --exclude-files 'fuzz/*' 'tests/*' --out Html --out Stdout --output-dir target/coverage --timeout 600

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (nightly toolchain); new inputs
## go to fuzz/target/corpus/, the committed seeds in fuzz/corpus/ stay as they are
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := http_conn record duration chunked
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for target in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$target && \
	  $(CARGO) +nightly fuzz run $$target fuzz/target/corpus/$$target fuzz/corpus/$$target \
	    -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

## bench: throughput, latency, CPU and memory side by side with nginx (loopback, bounded runs)
bench:
	python3 bench/bench.py

clean:
	$(CARGO) clean
	rm -rf build
