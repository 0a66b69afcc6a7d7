#!/usr/bin/env bash
# Every inline fast-path figure beside its peer, in one run, a line each with the ratio:
#
#   - forwarding between two vhost-user ports, 64-byte and 1400-byte frames, both directions,
#     one backend core: dpacc-backend net (flow hit through the vNF's flow processor, one
#     worker thread) against DPDK's dpdk-testpmd io forwarding (vhost PMD, one forwarding
#     core), with the same traffic generator: a second dpdk-testpmd on two virtio-user ports in
#     io mode, looping the frames it sent with `start tx_first` (BURSTS bursts of 32 per port);
#   - ESP encap/decap, 1400-byte frames (every pass through the worker encapsulates a plain
#     frame or decapsulates an ESP one, AES-128-GCM) against raw software AES-128-GCM on the
#     same payload;
#   - the flow table: 1 M flows installed (inserts/s, heap bytes per flow) against the targets
#     of issue 12 (1 M inserts/s, 160 bytes);
#   - multi-queue, 64-byte frames: dpacc-backend net --queue-pairs 2 (two workers, free to run
#     on both cores) against testpmd io-fwd with two queues per port and two forwarding
#     lcores (one per core), the generator looping on two queues per port from core 0; and
#     the 2-worker figure over the 1-worker one. On this 2-core machine the generator shares
#     core 0 with a worker (or a testpmd lcore): the figure shows what a second worker costs or
#     gains when cores are shared, not how far two free cores would scale.
#
# Needs root (hugepages), Debian's dpdk-dev, release builds of dpacc-backend and dpacc, and
# cargo (for the flow-table figure):
#   cargo build --release -p dpacc-backend -p dpacc-guest && sudo benches/peers.sh
# Environment: SECONDS_RUN (default 5), BURSTS (default 4), TARGET (default target/release),
# TARGET_B (a second build's directory, e.g. of the previous commit: its dpacc-backend is
# measured in the same run, for before/after, ESP included), PERF (a file: profile
# dpacc-backend during the 64-byte run with `perf record`), PERF_ESP (the same during the ESP
# run), NO_FLOWS (skip the flow-table figure), NO_MQ (skip the multi-queue figures), ROUNDS
# (default 1: how many times the one-core figures are measured, testpmd and each build once per
# round, their order turned every round; with more than one, a line per round and the
# median of each ratio: this VM's rates drift by ±20 % within a minute, so a ratio of figures
# taken seconds apart is worth more than one of figures a minute apart).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TARGET:-target/release}
RUN=${SECONDS_RUN:-5}
BURSTS=${BURSTS:-4}
DIR=$(mktemp -d /tmp/dpacc-peers.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "/var/run/dpdk/be$$"; [ -n "${KEEP:-}" ] || rm -rf "$DIR"' EXIT

command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing (apt-get install dpdk-dev)"; exit 1; }
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "$free" -lt 256 ]; then
  echo $(( $(cat /proc/sys/vm/nr_hugepages) + 256 )) > /proc/sys/vm/nr_hugepages
fi
grep -q hugetlbfs /proc/mounts || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }

# The generator: frames/s it received on both ports, measured over the last RUN seconds.
generate() {
  local a=$1 b=$2 txpkts=${3:-64} q=${4:-1} out=$DIR/gen.log
  {
    sleep 2
    echo "start tx_first $BURSTS"
    sleep 1; echo "show port stats all"
    sleep "$RUN"; echo "show port stats all"
    echo "stop"; echo "quit"
  } | dpdk-testpmd -l 0,1 --main-lcore 1 -m 256 --no-pci --single-file-segments --in-memory \
      --vdev "net_virtio_user0,path=$a,queues=$q" --vdev "net_virtio_user1,path=$b,queues=$q" \
      -- -i --forward-mode=io --nb-cores=1 --rxq="$q" --txq="$q" --total-num-mbufs=16384 \
      --txpkts="$txpkts" >"$out" 2>&1
  # The last two Rx-pps lines are the two ports over the last interval.
  grep -a "Rx-pps:" "$out" | tail -2 | awk '{s += $2} END {print s}'
}

# profile FILE PID: perf record of PID inside the next generate()'s measured interval (traffic
# from ~2 s, measured from 3 s to 3 + RUN s): from 3 s for RUN - 1 s, so that no idle tail
# after the generator stops dilutes the profile.
profile() {
  (sleep 3; exec perf record -e cpu-clock -F 4999 -g -o "$1" -p "$2" -- sleep $((RUN > 1 ? RUN - 1 : 1))) >/dev/null 2>&1 &
}

wait_socket() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1"; exit 1; }

# 1. testpmd: vhost PMD on both ports, io forwarding on one core (core 1; the generator's
#    forwarding core is core 0). Prints "64B 1400B" frames/s.
testpmd() {
  rm -f "$DIR/t0.sock" "$DIR/t1.sock"
  { sleep 1; echo start; sleep 60; echo quit; } | dpdk-testpmd -l 0,1 --no-huge -m 512 --no-pci --file-prefix "be$$" \
      --vdev "net_vhost0,iface=$DIR/t0.sock" --vdev "net_vhost1,iface=$DIR/t1.sock" \
      -- -i --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 >"$DIR/be.log" 2>&1 &
  local be=$! r64 r1400
  wait_socket "$DIR/t1.sock"
  r64=$(generate "$DIR/t0.sock" "$DIR/t1.sock" 64)
  r1400=$(generate "$DIR/t0.sock" "$DIR/t1.sock" 1400)
  kill "$be" 2>/dev/null; wait "$be" 2>/dev/null || true
  pkill -f "file-prefix be$$" 2>/dev/null || true
  echo "$r64 $r1400"
}
PMDMQ=0
if [ -z "${NO_MQ:-}" ]; then
  # Two queues per port, two forwarding lcores (lcore 1 on core 0, lcore 2 on core 1).
  { sleep 1; echo start; sleep 30; echo quit; } | dpdk-testpmd --lcores '0@0,1@0,2@1' --no-huge -m 512 --no-pci \
      --file-prefix "bq$$" --vdev "net_vhost0,iface=$DIR/q0.sock,queues=2" --vdev "net_vhost1,iface=$DIR/q1.sock,queues=2" \
      -- -i --forward-mode=io --nb-cores=2 --rxq=2 --txq=2 --total-num-mbufs=32768 >"$DIR/bq.log" 2>&1 &
  BQ=$!
  wait_socket "$DIR/q1.sock"
  PMDMQ=$(generate "$DIR/q0.sock" "$DIR/q1.sock" 64 2)
  kill "$BQ" 2>/dev/null; wait "$BQ" 2>/dev/null || true
  pkill -f "file-prefix bq$$" 2>/dev/null || true
fi

# 2. dpacc-backend net (build $1, tag $2): the vNF port plus two vhost-user uplinks; the vNF
#    installs the flows with the CLI and leaves (forwarding goes on without it). The worker
#    runs on core 1. Prints "64B 1400B ESP RAW" frames/s (RAW: M ops/s), or only the first
#    two when $3 is "plain".
dpacc() {
  local B=$1 tag=$2 mode=${3:-all} d=$DIR/$2
  mkdir -p "$d"
  local qp="" cpus=1
  if [ "$mode" = mq ]; then qp="--queue-pairs 2"; cpus=0,1; fi
  # shellcheck disable=SC2086 # $qp is empty or two words
  taskset -c $cpus "$B/dpacc-backend" net --socket "$d/vnf.sock" $qp \
      --uplink "vhost:$d/u1.sock" --uplink "vhost:$d/u2.sock" 2>"$d/dpacc.log" &
  local P=$!
  wait_socket "$d/u2.sock"
  local F="$T/dpacc flow --socket $d/vnf.sock"
  $F add --cookie 1 --match in_port=1 --actions output:2 >/dev/null
  $F add --cookie 2 --match in_port=2 --actions output:1 >/dev/null
  if [ -n "${PERF:-}" ] && [ "$tag" = a ]; then
    # Profile the backend while the generator runs (perf report -i $PERF afterwards).
    profile "$PERF" "$P"
  fi
  local r64 r1400=0 esp=0 raw=0
  if [ "$mode" = mq ]; then
    r64=$(generate "$d/u1.sock" "$d/u2.sock" 64 2)
    kill "$P" 2>/dev/null; wait "$P" 2>/dev/null || true
    echo "$r64 0 0 0"
    return
  fi
  r64=$(generate "$d/u1.sock" "$d/u2.sock" 64)
  r1400=$(generate "$d/u1.sock" "$d/u2.sock" 1400)
  if [ "$mode" = all ]; then
    # ESP: the same loop with 1400-byte frames; each pass through the worker encapsulates a
    # plain frame or decapsulates an ESP one (AES-128-GCM, one SA each way with the same key),
    # so every frame costs one AEAD operation.
    $F del --cookie 1 >/dev/null; $F del --cookie 2 >/dev/null
    local KEY=000102030405060708090a0b0c0d0e0f
    $F sa --spi 0x100 --key $KEY --salt 01020304 --tunnel 192.0.2.1,192.0.2.2 >/dev/null
    $F sa --spi 0x100 --key $KEY --salt 01020304 >/dev/null
    for p in 1 2; do
      local o=$((3 - p))
      $F add --cookie $((10 + p)) --priority 200 --match in_port=$p,esp --actions esp_decap,output:$o >/dev/null
      $F add --cookie $((20 + p)) --priority 100 --match in_port=$p,ip --actions esp_encap:0x100,output:$o >/dev/null
    done
    if [ -n "${PERF_ESP:-}" ] && [ "$tag" = a ]; then
      profile "$PERF_ESP" "$P"
    fi
    esp=$(generate "$d/u1.sock" "$d/u2.sock" 1400)
    raw=$("$T/dpacc" bench net --socket "$d/vnf.sock" --esp --size 1400 --seconds 1 | awk '/^raw/ {print $7}')
  fi
  kill "$P" 2>/dev/null; wait "$P" 2>/dev/null || true
  echo "$r64 $r1400 $esp $raw"
}

# The one-core figures, ROUNDS times: a line per round "PMD64 PMD1400 A64 A1400 ESP RAW B64
# B1400 BESP". The order of testpmd (t) and the builds (a, b) turns every round (t a b, a b t,
# b t a, then t b a, b a t, a t b), so each comes first, second and last alike: on this VM the
# one measured first is often faster (several runs saw the first dpacc build ahead by
# 1.03-1.38x, whichever it was).
ROUNDS=${ROUNDS:-1}
if [ -n "${TARGET_B:-}" ]; then ORDERS=(tab abt bta tba bat atb); else ORDERS=(ta at); fi
: >"$DIR/rounds"
for r in $(seq "$ROUNDS"); do
  order=${ORDERS[$(((r - 1) % ${#ORDERS[@]}))]}
  P64=0; P1400=0; A64=0; A1400=0; ESP=0; RAW=0; B64=0; B1400=0; BESP=0
  for w in $(echo "$order" | fold -w1); do
    case $w in
      t) read -r P64 P1400 < <(testpmd) ;;
      a) read -r A64 A1400 ESP RAW < <(dpacc "$T" a) ;;
      b) read -r B64 B1400 BESP _ < <(dpacc "$TARGET_B" b) ;;
    esac
  done
  echo "$P64 $P1400 $A64 $A1400 $ESP $RAW $B64 $B1400 $BESP $order" >>"$DIR/rounds"
done

MQ64=0
if [ -z "${NO_MQ:-}" ]; then
  read -r MQ64 _ _ _ < <(dpacc "$T" mq mq)
fi

# 3. The flow table.
FLOWS=""
if [ -z "${NO_FLOWS:-}" ]; then
  FLOWS=$(cargo bench -q --bench flow_processor -- --bench no-criterion-run 2>/dev/null | grep '^flow_processor/1M_flows' || true)
fi

python3 - "$DIR/rounds" "${TARGET_B:-}" "$FLOWS" "$PMDMQ" "$MQ64" <<'PY'
import re, statistics, sys
rounds = [[float(x or 0) for x in l.split()[:9]] for l in open(sys.argv[1]) if l.strip()]
orders = [l.split()[9] for l in open(sys.argv[1]) if l.strip()]
tb, flows = sys.argv[2], sys.argv[3]
pmdmq, mq64 = (float(x or 0) for x in sys.argv[4:6])
r = lambda x, y: f"{x / y:.2f}x" if y else "n/a"
q = lambda x, y: x / y if y else 0.0
med = lambda xs: statistics.median(xs) if xs else 0.0
def report(pmd64, pmd1400, a64, a1400, esp, raw, b64, b1400, besp):
    print("Forwarding between two vhost-user ports, both directions, one backend core (Mpps):")
    for size, pmd, a, b in ((64, pmd64, a64, b64), (1400, pmd1400, a1400, b1400)):
        print(f"  {size:4} B  dpdk-testpmd io-fwd {pmd/1e6:6.2f}   dpacc flow hit {a/1e6:6.2f}   {r(a, pmd)}")
        if tb:
            print(f"  {size:4} B  dpacc ({tb}) {b/1e6:6.2f}   {r(b, pmd)}   (this build / that one: {r(a, b)})")
    print("ESP encap or decap on every pass, 1400-byte frames (AES-128-GCM), one core:")
    print(f"  dpacc {esp/1e6:6.3f} Mpps = {esp*1386*8/1e9:5.2f} Gbit/s of inner packets   "
          f"raw software AES-128-GCM {raw:6.3f} M ops/s on 1386 B   {r(esp/1e6, raw)}")
    if tb:
        print(f"  dpacc ({tb}) {besp/1e6:6.3f} Mpps   {r(besp/1e6, raw)}   (this build / that one: {r(esp, besp)})")
if len(rounds) == 1:
    report(*rounds[0])
else:
    # A line per round, then the median of every ratio over the rounds (and of every rate).
    print(f"One-core figures, {len(rounds)} rounds (order t = testpmd, a = this build, b = that one):")
    for n, (p64, p1400, a64, a1400, esp, raw, b64, b1400, besp) in enumerate(rounds, 1):
        line = (f"  round {n} ({orders[n - 1]}): 64 B {r(a64, p64)} (testpmd {p64/1e6:.2f}, dpacc {a64/1e6:.2f} Mpps)   "
                f"1400 B {r(a1400, p1400)}   ESP {r(esp/1e6, raw)} ({esp/1e6:.3f} Mpps, raw {raw:.3f} M)")
        if tb:
            line += f"   that build: 64 B {r(b64, p64)}, 1400 B {r(b1400, p1400)}, ESP {r(besp/1e6, raw)}; this / that: 64 B {r(a64, b64)}, ESP {r(esp, besp)}"
        print(line)
    cols = list(zip(*rounds))
    ratio = lambda i, j, s=1.0: med([q(x / s, y) for x, y in zip(cols[i], cols[j])])
    print(f"Median over {len(rounds)} rounds (each ratio's median; rates are medians too):")
    report(*(med(c) for c in cols))
    print(f"  median ratios: 64 B {ratio(2, 0):.2f}x, 1400 B {ratio(3, 1):.2f}x, ESP {ratio(4, 5, 1e6):.2f}x" +
          (f"; that build 64 B {ratio(6, 0):.2f}x, 1400 B {ratio(7, 1):.2f}x, ESP {ratio(8, 5, 1e6):.2f}x;"
           f" this / that 64 B {ratio(2, 6):.2f}x, 1400 B {ratio(3, 7):.2f}x, ESP {ratio(4, 8):.2f}x" if tb else ""))
pmd64, a64 = rounds[0][0], rounds[0][2]
if pmdmq or mq64:
    print("Multi-queue, 64 B, two queue pairs per port, generator on core 0 shared with a worker (Mpps):")
    print(f"  dpdk-testpmd io-fwd 2 lcores {pmdmq/1e6:6.2f}   dpacc --queue-pairs 2 {mq64/1e6:6.2f}   {r(mq64, pmdmq)}")
    print(f"  dpacc 2 workers / 1 worker: {r(mq64, a64)}   testpmd 2 lcores / 1 lcore: {r(pmdmq, pmd64)}")
for line in flows.splitlines():
    m = re.search(r"1M_flows(\S*): .* = (\d+) inserts/s; (\d+) bytes per flow", line)
    if m:
        what = {"_own_actions": "own action list each", "_idle_timeouts": "shared action lists, idle timeouts"}.get(m.group(1), "shared action lists")
        ins, b = float(m.group(2)), float(m.group(3))
        print(f"Flow table, 1 M flows ({what}): {ins/1e6:.2f} M inserts/s ({r(ins, 1e6)} of the 1 M/s target), "
              f"{b:.0f} bytes per flow ({r(160, b)} of the 160-byte budget)")
PY
