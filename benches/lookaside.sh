#!/usr/bin/env bash
# Look-aside crypto figures of issue 15, in one run, each beside its peer (the software driver
# called in-process on the same buffers, same run) with the ratio: AES-256-GCM through a real
# `dpacc-backend crypto` (vhost-user, virtio-crypto) driven by `dpacc bench`, 64 B and 16 KiB,
# polled and with interrupts, 1 and 2 data queues; then the round trip of one 64 B operation
# (p50/p99) in both modes.
#
#   cargo build --release -p dpacc-backend -p dpacc-guest && benches/lookaside.sh
# Environment: TARGET (default target/release), SECONDS_RUN (default 2), SIZES (default
# 64,16384), ALG (default aes-256-gcm). On a 2-core machine the 2-queue cases run four busy
# threads (two client threads, two backend workers) on two cores: contention, not scaling.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TARGET:-target/release}
RUN=${SECONDS_RUN:-2}
DIR=$(mktemp -d /tmp/dpacc-lookaside.XXXXXX)
SOCK=$DIR/crypto.sock
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$DIR"' EXIT

"$T/dpacc-backend" crypto --socket "$SOCK" --queues 2 >"$DIR/backend.log" 2>&1 &
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$DIR/backend.log"; echo "dpacc-backend did not start"; exit 1; }

"$T/dpacc" bench --socket "$SOCK" --alg "${ALG:-aes-256-gcm}" --size "${SIZES:-64,16384}" \
    --mode poll,interrupt --queues 1,2 --seconds "$RUN"
"$T/dpacc" bench --socket "$SOCK" --alg "${ALG:-aes-256-gcm}" --size 64 \
    --mode interrupt,poll --latency --seconds "$RUN"
