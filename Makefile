# The two commands of the README's quick start: `make demo` and `make test`.
# Both install the missing host prerequisites first (see scripts/).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: demo test prereqs fmt-check clippy doc unit bench guest-image install-shim

## Installs what is missing, builds, and runs the main example: a command
## in a container in a fresh VM (its kernel is not the host's).
demo: prereqs guest-image
	$(CARGO) run --release --example run -- --cpus 1 -- \
	  sh -c 'echo "guest: $$(uname -a)"; head -5 /proc/cpuinfo'
	@echo "host:  $$(uname -a)"

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

## The suite checks itself: the host's cgroups, mounts, /run/vc, loop
## devices and QEMU/virtiofsd processes must be the same after it as before.
HOST_SNAPSHOT := $(TARGET_DIR)/host-before-tests.txt
unit: guest-image
	$(CARGO) run -q -p vc-test-support --bin vc-host-snapshot -- save $(HOST_SNAPSHOT)
	$(CARGO) test --workspace
	$(CARGO) run -q -p vc-test-support --bin vc-host-snapshot -- check $(HOST_SNAPSHOT)

## The guest image the agent's VM tests boot: the static guest agent as
## /init, and vmlinux, built through vc-guest-image into the target dir.
## The VM tests and the agent bench build the agent with the same command
## and flags (vc_test_support::agent_binary), a no-op after this.
GUEST_AGENT_TARGET := x86_64-unknown-linux-gnu
GUEST_AGENT_BIN := $(TARGET_DIR)/$(GUEST_AGENT_TARGET)/release/vc-guest-agent
GUEST_IMAGE_DIR := $(TARGET_DIR)/vc-guest-agent-image
guest-image:
	env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
	  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
	  CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
	  $(CARGO) build --release -p vc-guest-agent --bin vc-guest-agent --target $(GUEST_AGENT_TARGET)
	$(CARGO) run -p vc-guest-image -- --out $(GUEST_IMAGE_DIR) --init $(GUEST_AGENT_BIN)

## Benchmarks (not part of `make test`: figures, not pass/fail).
bench: prereqs
	$(CARGO) bench -p vc-benches -p containerd-shim-vc-v2

## Installs the containerd shim (runtime io.containerd.vc.v2): the binary
## on containerd's PATH, and the guest image and example configuration
## where the shim looks by default (see crates/shim/configuration.toml).
PREFIX ?= /usr/local
SHIM_SHARE ?= /usr/share/virtcontainers
install-shim: prereqs guest-image
	$(CARGO) build --release -p containerd-shim-vc-v2 --bin containerd-shim-vc-v2
	install -D -m 0755 $(TARGET_DIR)/release/containerd-shim-vc-v2 $(PREFIX)/bin/containerd-shim-vc-v2
	install -D -m 0644 $(GUEST_IMAGE_DIR)/vmlinux $(SHIM_SHARE)/vmlinux
	install -D -m 0644 $(GUEST_IMAGE_DIR)/initramfs.cpio $(SHIM_SHARE)/initramfs.cpio
	install -D -m 0644 crates/shim/configuration.toml $(SHIM_SHARE)/configuration.toml
