#!/usr/bin/env bash
# Look-aside crypto figures of issue 15, in one run, each beside its peer (the software driver
# called in-process on the same buffers, same run) with the ratio: AES-256-GCM through a real
# `dpacc-backend crypto` (vhost-user, virtio-crypto) driven by `dpacc bench`, 64 B and 16 KiB,
# polled and with interrupts, 1 and 2 data queues; then the round trip of one 64 B operation
# (p50/p99) in both modes.
#
#   cargo build --release -p dpacc-backend -p dpacc-guest && benches/lookaside.sh
# Environment: TARGET (default target/release), SECONDS_RUN (default 2), SIZES (default
# 64,16384), MODES (default poll,interrupt), QUEUES (default 1,2), ALG (default aes-256-gcm),
# NO_LATENCY=1 (skip the round trips), BACKEND_ARGS (extra `dpacc-backend crypto` options),
# BENCH_ARGS (extra `dpacc bench` options of the throughput sweep, e.g. `--wake-after 96`),
# BACKEND_CPUS / CLIENT_CPUS (taskset lists; default 1 and 0: the backend's workers on one core,
# `dpacc bench` and its raw peer on the other, so the scheduler does not put them on one core
# for part of a run; empty: not pinned).
# TARGET_B (a second build's directory, e.g. main's): both builds run in the same invocation,
# alternating A, B, A, B for ROUNDS rounds (default 2; each round swaps the order), each with
# its own backend and its own client, and a summary line per case gives B/A of the device
# rates, each build's backend busy figure and the CPU its `dpacc bench` process used during
# the device run, then per case the median over the rounds of each build's rate, its ratio to
# raw and B/A (read from /proc, so builds that do not print it are measured alike). BACKEND_ARGS_B / BENCH_ARGS_B (default: BACKEND_ARGS / BENCH_ARGS) are B's own options,
# so TARGET_B may be the same build as TARGET to compare two settings (e.g.
# `BACKEND_ARGS_B='--busy-poll-us 200'`). On a 2-core machine the 2-queue cases run four busy threads (two client threads, two
# backend workers) on two cores: contention, not scaling.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${TARGET:-target/release}
B=${TARGET_B:-}
RUN=${SECONDS_RUN:-2}
ROUNDS=${ROUNDS:-2}
BCPU=${BACKEND_CPUS-1}
CCPU=${CLIENT_CPUS-0}
pin() { if [ -n "$1" ]; then echo "taskset -c $1"; fi; }
DIR=$(mktemp -d /tmp/dpacc-lookaside.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$DIR"' EXIT

# run NAME TARGET BACKEND_ARGS BENCH_ARGS: one backend of TARGET, the throughput sweep and (unless NO_LATENCY) the round
# trips through it; the output goes to stdout and to $DIR/NAME.out.
run() {
  local name=$1 t=$2 bargs=$3 cargs=$4 sock=$DIR/$1.sock
  rm -f "$sock"
  # shellcheck disable=SC2086
  $(pin "$BCPU") "$t/dpacc-backend" crypto --socket "$sock" --queues 2 $bargs >"$DIR/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { cat "$DIR/$name.log"; echo "dpacc-backend ($t) did not start"; exit 1; }
  echo "=== $name: $t ${bargs:+(backend: $bargs) }${cargs:+(bench: $cargs)}"
  {
    # shellcheck disable=SC2086
    python3 "$DIR/cpu.py" $(pin "$CCPU") "$t/dpacc" bench --socket "$sock" --alg "${ALG:-aes-256-gcm}" --size "${SIZES:-64,16384}" \
        --mode "${MODES:-poll,interrupt}" --queues "${QUEUES:-1,2}" --seconds "$RUN" $cargs
    if [ -z "${NO_LATENCY:-}" ]; then
      $(pin "$CCPU") "$t/dpacc" bench --socket "$sock" --alg "${ALG:-aes-256-gcm}" --size 64 \
          --mode interrupt,poll --latency --seconds "$RUN"
    fi
  } | tee "$DIR/$name.out"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# cpu.py CMD...: runs CMD, passing its output through; after each `device` line of a case it
# prints the CPU the whole `dpacc bench` process used during that device run (from
# /proc/PID/stat between the case line, or the `before` line of the raw run ahead of the device
# run, and the device line), so
# the client's cost is comparable between builds that do not print it themselves.
cat >"$DIR/cpu.py" <<'PY'
import os, subprocess, sys, time
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
tck = os.sysconf("SC_CLK_TCK")
def cpu():
    try:
        f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tck
    except (OSError, IndexError, ValueError):
        return 0.0
t0 = c0 = None
for line in p.stdout:
    # The device run starts after the case line, or after the raw run a build makes before it
    # (its `before` line).
    if line.startswith("case") or (line.startswith("before") and t0 is not None):
        t0, c0 = time.monotonic(), cpu()
    sys.stdout.write(line)
    if line.startswith("device") and t0 is not None:
        c, t = cpu(), time.monotonic()
        print(f"client    dpacc bench process used {(c - c0) / max(t - t0, 1e-9):.2f} core(s) during the device run")
        t0 = None
    sys.stdout.flush()
sys.exit(p.wait())
PY

if [ -z "$B" ]; then
  run a "$A" "${BACKEND_ARGS:-}" "${BENCH_ARGS:-}"
  exit 0
fi

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
  for w in $order; do
    if [ "$w" = a ]; then
      run "a$r" "$A" "${BACKEND_ARGS:-}" "${BENCH_ARGS:-}"
    else
      run "b$r" "$B" "${BACKEND_ARGS_B-${BACKEND_ARGS:-}}" "${BENCH_ARGS_B-${BENCH_ARGS:-}}"
    fi
  done
done

# Summary: per case (mode, queues, size) the device rate of each build in each round and B/A.
python3 - "$DIR" "$ROUNDS" "$A" "$B" <<'PY'
import re, statistics, sys
d, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def rows(path):
    out, on, cpus, case = {}, False, {}, None
    for line in open(path):
        m = re.match(r"case\s+\S+ (\d+) B, .* (\d+) queue\(s\), (\w+)", line)
        if m:
            case = (m.group(3), m.group(2), m.group(1))
        m = re.match(r"client\s+dpacc bench process used ([\d.]+) core", line)
        if m and case:
            cpus[case] = m.group(1)
        if line.startswith("summary"):
            on = True
            continue
        f = line.split()
        if on and len(f) >= 8 and f[0] in ("polled", "interrupts"):
            k = (f[0], f[1], f[2])
            out[k] = (float(f[3]), float(f[5]), f[6], cpus.get(k, "-"))
        if "round trips" in line:
            m = re.search(r"p50\s+([\d.]+) us.*p99\s+([\d.]+) us", line)
            if m and line.startswith("device"):
                out.setdefault(("lat", str(len([k for k in out if k[0] == "lat"]))), m.groups())
    return out
print(f"A/B    A = {a}, B = {b} (same run, alternating; device ops/s, ratio to raw, backend busy cores, client process cores)")
cases = {}  # per case, each round's (A rate, A ratio to raw, B rate, B ratio to raw)
for r in range(1, rounds + 1):
    ra, rb = rows(f"{d}/a{r}.out"), rows(f"{d}/b{r}.out")
    for k in ra:
        if k[0] == "lat" or k not in rb:
            continue
        (da, xa, ba, _), (db, xb, bb, _) = ra[k], rb[k]
        (ca, cb) = (ra[k][3], rb[k][3])
        cases.setdefault(k, []).append((da, xa, db, xb))
        print(f"round {r} {k[0]:>10} q{k[1]} {k[2]:>6} B: A {da:>10.0f} ({xa:.3f}, busy {ba}, client {ca})"
              f"  B {db:>10.0f} ({xb:.3f}, busy {bb}, client {cb})  B/A {db / max(da, 1e-9):.3f}"
              f" (of the ratios to raw {xb / max(xa, 1e-9):.3f})")
    la = [ra[k] for k in sorted(ra) if k[0] == "lat"]
    lb = [rb[k] for k in sorted(rb) if k[0] == "lat"]
    for i, (x, y) in enumerate(zip(la, lb)):
        mode = ("interrupts", "polled")[i] if i < 2 else str(i)
        print(f"round {r} latency {mode:>10}: A p50 {x[0]} / p99 {x[1]} us  B p50 {y[0]} / p99 {y[1]} us")
# Per case, the median over the rounds of each build's rate, its ratio to raw and B/A.
med = statistics.median
for k, v in cases.items():
    da, xa, db, xb = zip(*v)
    print(f"median of {len(v)} {k[0]:>10} q{k[1]} {k[2]:>6} B: A {med(da):>10.0f} ({med(xa):.3f}; rounds"
          f" {', '.join(f'{x:.3f}' for x in xa)})  B {med(db):>10.0f} ({med(xb):.3f}; rounds"
          f" {', '.join(f'{x:.3f}' for x in xb)})  B/A {med([y / max(x, 1e-9) for x, y in zip(da, db)]):.3f}")
PY
