#!/usr/bin/env bash
# The cost of isolating vNF ports in processes (ADR 0011): one dpacc-backend serving N vNF
# ports (in-process containment) against `dpacc-backend net --isolate` (a supervisor and one
# process per vNF port), in the same run:
#   - start-up time until every socket is bound;
#   - memory: resident (VmRSS) and proportional (Pss, shared pages split) of all processes,
#     idle and after each vNF connected once;
#   - frames per second of two vNFs forwarding at once (`dpacc bench net` hairpins, 64 B) and
#     of one alone.
# Prints the figures and the ratios (--isolate / one process).
#
# Needs release builds:  cargo build --release -p dpacc-backend -p dpacc-guest
# Measure alone:         flock -x /work/team/cpu.lock benches/vnf-isolation.sh
# Environment: N (default 4 ports), SECONDS_RUN (default 3), TARGET (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TARGET:-target/release}
N=${N:-4}
RUN=${SECONDS_RUN:-3}
DIR=$(mktemp -d /tmp/dpacc-iso.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

now() { date +%s.%N; }
calc() { awk "BEGIN { print $* }"; }
wait_sockets() { for s in "$@"; do for _ in $(seq 500); do [ -S "$s" ] && break; sleep 0.01; done; [ -S "$s" ] || { echo "no socket $s"; exit 1; }; done; }
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$2/${3:-status}"; }
mem() { # total VmRSS and Pss (KiB) of the given pids
  local rss=0 pss=0
  for p in "$@"; do
    rss=$((rss + $(kib VmRSS "$p"))); pss=$((pss + $(kib Pss "$p" smaps_rollup)))
  done
  echo "$rss $pss"
}
mpps() { awk '/^net / {for (i = 1; i <= NF; i++) if ($i == "Mpps,") print $(i - 1)}' "$1"; }
bench() { "$T/dpacc" bench net --socket "$1" --seconds "$RUN" >"$2" 2>&1; }
touch_all() { for i in $(seq "$N"); do "$T/dpacc" flow --socket "$DIR/$1$i.sock" info >/dev/null; done; }

measure() { # $1: label, $2: socket prefix, rest: pids
  local label=$1 pre=$2; shift 2
  read -r rss0 pss0 < <(mem "$@")
  touch_all "$pre"
  read -r rss1 pss1 < <(mem "$@")
  bench "$DIR/${pre}1.sock" "$DIR/$pre-solo.log"
  bench "$DIR/${pre}1.sock" "$DIR/$pre-a.log" & local b1=$!
  bench "$DIR/${pre}2.sock" "$DIR/$pre-b.log" & local b2=$!
  wait $b1 $b2
  local solo a b
  solo=$(mpps "$DIR/$pre-solo.log"); a=$(mpps "$DIR/$pre-a.log"); b=$(mpps "$DIR/$pre-b.log")
  echo "$label idle_rss_kib=$rss0 idle_pss_kib=$pss0 used_rss_kib=$rss1 used_pss_kib=$pss1 solo_mpps=$solo pair_mpps=$(calc "$a + $b")"
}

# 1. One process, N ports.
args=()
for i in $(seq "$N"); do args+=(--port "socket=$DIR/one$i.sock"); done
t0=$(now)
RUST_LOG=warn "$T/dpacc-backend" net "${args[@]}" 2>"$DIR/one.log" &
PIDS+=($!); ONE=$!
wait_sockets $(for i in $(seq "$N"); do echo "$DIR/one$i.sock"; done)
t_one=$(calc "$(now) - $t0")
A=$(measure one one "$ONE")
kill "$ONE"; wait "$ONE" 2>/dev/null || true

# 2. `--isolate`: a supervisor and N processes, one port each.
args=()
for i in $(seq "$N"); do args+=(--port "socket=$DIR/many$i.sock"); done
t0=$(now)
RUST_LOG=warn "$T/dpacc-backend" net --isolate "${args[@]}" 2>"$DIR/many.log" &
PIDS+=($!); SUP=$!
wait_sockets $(for i in $(seq "$N"); do echo "$DIR/many$i.sock"; done)
t_many=$(calc "$(now) - $t0")
read -r -a MANY < "/proc/$SUP/task/$SUP/children" || true  # (no trailing newline)
B=$(measure many many "$SUP" "${MANY[@]}")

get() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }
printf '%-44s %14s %14s %8s\n' "$N vNF ports" "one process" "--isolate" "ratio"
for k in idle_rss_kib idle_pss_kib used_rss_kib used_pss_kib solo_mpps pair_mpps; do
  a=$(get "$A" "$k"); b=$(get "$B" "$k")
  printf '%-44s %14s %14s %8.2f\n' "$k" "$a" "$b" "$(calc "$b / $a")"
done
printf '%-44s %14.3f %14.3f %8.2f\n' "start-up until every socket is bound (s)" "$t_one" "$t_many" "$(calc "$t_many / $t_one")"
