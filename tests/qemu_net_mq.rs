//! Multi-queue with a stock Linux guest: QEMU 10 with `-netdev vhost-user,...,queues=2` and
//! `virtio-net-pci,mq=on` in front of `dpacc-backend net --queue-pairs 2` (two workers, one
//! per queue pair, sharing the vNF's flows), `-smp 2`: the guest's own `virtio_net` driver
//! enables both pairs (QEMU keeps the control queue and enables the pairs with
//! SET_VRING_ENABLE). The guest pings eight addresses of a namespace behind the port's
//! multi-queue TAP uplink from each of its two CPUs (XPS: CPU k sends on TX queue k; the TAP
//! spreads the replies over its queues by flow), then reads its own per-queue RX interrupt
//! counts: both pairs must have carried frames, every ping must come back, and the ICMP
//! flows' counters (summed over the workers) must equal the echo requests and replies.
//!
//! Needs QEMU (SKIPPED otherwise, a failure with CI=true), root and iproute2.

mod common;

use common::guest::{flow_packets, qemu_or_skip, NetGuest};
use common::netns::{must, Net};

/// Host addresses in the first namespace: 10.9.8.1 and these.
const EXTRA: [u8; 7] = [11, 12, 13, 14, 15, 16, 17];

fn script() -> String {
    let mut addrs = vec!["10.9.8.1".to_string()];
    addrs.extend(EXTRA.iter().map(|a| format!("10.9.8.{a}")));
    let addrs = addrs.join(" ");
    format!(
        r#"
ip link set eth0 up
ip addr add 10.9.8.3/24 dev eth0
echo "DPACC-MQ-QUEUES $(ls /sys/class/net/eth0/queues | tr '\n' ' ')"
echo "DPACC-MQ-XPS $(cat /sys/class/net/eth0/queues/tx-0/xps_cpus) $(cat /sys/class/net/eth0/queues/tx-1/xps_cpus)"
F="/dpacc/dpacc flow --iface eth0"
$F add --cookie 1 --match in_port=0 --actions output:1 || echo "DPACC-MQ-FAIL add1"
$F add --cookie 2 --match in_port=1 --actions output:0 || echo "DPACC-MQ-FAIL add2"
$F add --cookie 3 --priority 200 --match in_port=0,proto=1 --actions output:1 || echo "DPACC-MQ-FAIL add3"
$F add --cookie 4 --priority 200 --match in_port=1,proto=1 --actions output:0 || echo "DPACC-MQ-FAIL add4"
ok=0
for cpu in 0 1; do
  for a in {addrs}; do
    if taskset -c $cpu ping -c 1 -W 5 $a >/dev/null; then ok=$((ok+1)); else echo "DPACC-MQ-LOST cpu $cpu $a"; fi
  done
done
echo "DPACC-MQ-PINGS $ok"
grep virtio /proc/interrupts
for q in 0 1; do
  n=$(grep "virtio0-input.$q" /proc/interrupts | awk '{{print $2 + $3}}')
  echo "DPACC-MQ-RXIRQ $q $n"
done
$F stats --cookie 3
$F stats --cookie 4
echo "DPACC-MQ-DONE"
"#
    )
}

#[test]
fn stock_guest_spreads_flows_over_two_queue_pairs_and_two_workers() {
    if !qemu_or_skip() {
        return;
    }
    let Some(net) = Net::start_with("m", 8, 2) else {
        return;
    };
    for a in EXTRA {
        must(&[
            "ip",
            "-n",
            &net.ns[0],
            "addr",
            "add",
            &format!("10.9.8.{a}/24"),
            "dev",
            &net.taps[0],
        ]);
    }
    let b = NetGuest {
        run: "net_mq",
        script: &script(),
        socket: &net.socket,
        mac: "52:54:00:dc:ac:08",
        queues: 2,
        tag: "DPACC-MQ",
    }
    .boot(&["virtio"]);
    let log = &b.serial;
    assert!(
        log.contains("DPACC-MQ-QUEUES rx-0 rx-1 tx-0 tx-1"),
        "the guest did not enable two queue pairs\n{}",
        b.diag()
    );
    let field = |key: &str| -> Vec<u64> {
        log.lines()
            .filter_map(|l| l.split(key).nth(1))
            .map(|r| {
                r.split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    };
    let pings = 2 * (1 + EXTRA.len()) as u64;
    assert_eq!(field("DPACC-MQ-PINGS"), [pings], "pings lost\n{}", b.diag());
    let irqs = field("DPACC-MQ-RXIRQ");
    assert!(
        irqs.len() == 2 && irqs.iter().all(|&n| n > 0),
        "both RX queues must have carried frames: {irqs:?}\n{}",
        b.diag()
    );
    let count = |cookie| flow_packets(log, cookie);
    // Every echo request went out through the ICMP flow of port 0 and every reply came back
    // through port 1's, on whichever worker: the summed counters are exact.
    assert_eq!(
        (count(3), count(4)),
        (pings, pings),
        "ICMP flow counters\n{}",
        b.diag()
    );
}
