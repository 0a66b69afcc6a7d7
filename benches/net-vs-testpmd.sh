#!/usr/bin/env bash
# Forwarding between two vhost-user ports, 64-byte frames: dpacc-backend net (flow hit through
# the vNF's flow processor, one worker thread) against DPDK's dpdk-testpmd io forwarding (one
# forwarding core), in the same run, with the same traffic generator: a second dpdk-testpmd on
# two virtio-user ports in io mode, looping the frames it sent with `start tx_first` (BURSTS
# bursts of 32 per port). Prints frames per second forwarded (both directions) and the ratio.
#
# Needs root (hugepages), Debian's dpdk-dev, and release builds of dpacc-backend and dpacc:
#   cargo build --release -p dpacc-backend -p dpacc-guest && sudo benches/net-vs-testpmd.sh
# Environment: SECONDS_RUN (default 5), BURSTS (default 4), TARGET (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TARGET:-target/release}
RUN=${SECONDS_RUN:-5}
BURSTS=${BURSTS:-4}
DIR=$(mktemp -d /tmp/dpacc-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "/var/run/dpdk/be$$"; [ -n "${KEEP:-}" ] || rm -rf "$DIR"' EXIT

command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing (apt-get install dpdk-dev)"; exit 1; }
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "$free" -lt 256 ]; then
  echo $(( $(cat /proc/sys/vm/nr_hugepages) + 256 )) > /proc/sys/vm/nr_hugepages
fi
grep -q hugetlbfs /proc/mounts || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }

# The generator: frames/s it received on both ports, measured over the last RUN seconds.
generate() {
  local a=$1 b=$2 out=$DIR/gen.log txpkts=${3:-64}
  {
    sleep 2
    echo "start tx_first $BURSTS"
    sleep 1; echo "show port stats all"
    sleep "$RUN"; echo "show port stats all"
    echo "stop"; echo "quit"
  } | dpdk-testpmd -l 0,1 --main-lcore 1 -m 256 --no-pci --single-file-segments --in-memory \
      --vdev "net_virtio_user0,path=$a" --vdev "net_virtio_user1,path=$b" \
      -- -i --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 --txpkts="$txpkts" >"$out" 2>&1
  # The last two Rx-pps lines are the two ports over the last interval.
  grep -a "Rx-pps:" "$out" | tail -2 | awk '{s += $2} END {print s}'
}

wait_socket() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1"; exit 1; }

# 1. testpmd: vhost PMD on both ports, io forwarding on one core (core 1; the generator's
#    forwarding core is core 0).
{ sleep 1; echo start; sleep 30; echo quit; } | dpdk-testpmd -l 0,1 --no-huge -m 512 --no-pci --file-prefix "be$$" \
    --vdev "net_vhost0,iface=$DIR/t0.sock" --vdev "net_vhost1,iface=$DIR/t1.sock" \
    -- -i --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 >"$DIR/be.log" 2>&1 &
BE=$!
wait_socket "$DIR/t1.sock"
PMD=$(generate "$DIR/t0.sock" "$DIR/t1.sock")
kill "$BE" 2>/dev/null; wait "$BE" 2>/dev/null || true
pkill -f "file-prefix be$$" 2>/dev/null || true

# 2. dpacc-backend net: the vNF port plus two vhost-user uplinks; the vNF installs the flows
#    with the CLI and leaves (forwarding goes on without it). The worker runs on core 1.
taskset -c 1 "$T/dpacc-backend" net --socket "$DIR/vnf.sock" \
    --uplink "vhost:$DIR/u1.sock" --uplink "vhost:$DIR/u2.sock" 2>"$DIR/dpacc.log" &
wait_socket "$DIR/u2.sock"
"$T/dpacc" flow add --socket "$DIR/vnf.sock" --cookie 1 --match in_port=1 --actions output:2 >/dev/null
"$T/dpacc" flow add --socket "$DIR/vnf.sock" --cookie 2 --match in_port=2 --actions output:1 >/dev/null
if [ -n "${PERF:-}" ]; then
  # Profile the backend while the generator runs (perf report -i $PERF afterwards).
  (sleep 4; exec perf record -e cpu-clock -F 4999 -g -o "$PERF" -p "$(pgrep -n dpacc-backend)" -- sleep 3) >/dev/null 2>&1 &
fi
DPACC=$(generate "$DIR/u1.sock" "$DIR/u2.sock")

# 3. ESP: the same loop with 1400-byte frames; each pass through the worker encapsulates a
#    plain frame or decapsulates an ESP one (AES-128-GCM, one SA each way with the same key),
#    so every frame costs one AEAD operation. Compared with the raw software AES-128-GCM rate
#    on the same payload.
F="$T/dpacc flow --socket $DIR/vnf.sock"
$F del --cookie 1 >/dev/null; $F del --cookie 2 >/dev/null
KEY=000102030405060708090a0b0c0d0e0f
$F sa --spi 0x100 --key $KEY --salt 01020304 --tunnel 192.0.2.1,192.0.2.2 >/dev/null
$F sa --spi 0x100 --key $KEY --salt 01020304 >/dev/null
for p in 1 2; do
  o=$((3 - p))
  $F add --cookie $((10 + p)) --priority 200 --match in_port=$p,esp --actions esp_decap,output:$o >/dev/null
  $F add --cookie $((20 + p)) --priority 100 --match in_port=$p,ip --actions esp_encap:0x100,output:$o >/dev/null
done
ESP=$(generate "$DIR/u1.sock" "$DIR/u2.sock" 1400)
RAW=$("$T/dpacc" bench net --socket "$DIR/vnf.sock" --esp --size 1400 --seconds 1 | awk '/^raw/ {print $7}')

python3 - "$PMD" "$DPACC" "$ESP" "$RAW" <<'PY'
import sys
pmd, dp, esp, raw = (float(x) for x in sys.argv[1:5])
print(f"64-byte frames forwarded between two vhost-user ports (both directions), one core:")
print(f"  dpdk-testpmd io forwarding : {pmd/1e6:6.2f} Mpps")
print(f"  dpacc-backend net flow hit : {dp/1e6:6.2f} Mpps  ({dp/pmd if pmd else 0:.2f}x)")
print(f"1400-byte frames, ESP encap or decap (AES-128-GCM) on every pass, one core:")
print(f"  dpacc-backend net          : {esp/1e6:6.3f} Mpps = {esp*1386*8/1e9:5.2f} Gbit/s of inner packets")
print(f"  raw software AES-128-GCM   : {raw:6.3f} M ops/s on 1386 B ({esp/1e6/raw if raw else 0:.2f}x)")
PY
