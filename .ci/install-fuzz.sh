#!/usr/bin/env bash
# Installs what the fuzzing step needs (idempotent): the nightly toolchain (cargo-fuzz builds
# with -Zsanitizer=address and SanitizerCoverage) and cargo-fuzz itself, from crates.io.
set -euo pipefail
log() { echo "install-fuzz: $*" >&2; }
CARGO_FUZZ_VERSION=0.13.2
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "rustup toolchain install nightly"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
rustup run nightly rustc --version >&2
cargo fuzz --version >&2
