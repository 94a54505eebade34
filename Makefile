# The two commands of the README's quick start: `make demo` and `make test`.
# Both install the missing host prerequisites first (see scripts/).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test prereqs fmt-check clippy doc unit bench

## Installs what is missing, builds, and runs the main example.
demo: prereqs
	$(CARGO) run --release --example cgroups -- --cpus 1.5

## Installs what is missing, then the whole suite: fmt, clippy, docs, tests.
test: prereqs fmt-check clippy doc unit

prereqs:
	bash scripts/install-prereqs.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

unit:
	$(CARGO) test --workspace

## Benchmarks (not part of `make test`: figures, not pass/fail).
bench: prereqs
	$(CARGO) bench -p vc-benches
