//! A stock Linux guest (QEMU 10, `-netdev vhost-user` + `virtio-net-pci`, the guest's own
//! `virtio_net` driver) behind `dpacc-backend net`: the vNF inside the guest programs its
//! flow processor through the interface with `dpacc flow --iface eth0` (AF_PACKET, the
//! guest library's VM transport), then pings a host in a network namespace behind the
//! port's TAP uplink.
//!
//! Needs QEMU (SKIPPED otherwise, a failure with CI=true), root and iproute2.

mod common;

use common::guest::{flow_packets, qemu_or_skip, NetGuest};
use common::netns::Net;

const RUN: &str = r#"
ip link set eth0 up
ip addr add 10.9.7.3/24 dev eth0
echo "DPACC-NET-MAC $(cat /sys/class/net/eth0/address)"
/dpacc/dpacc flow --iface eth0 info || echo "DPACC-NET-FAIL info"
/dpacc/dpacc flow --iface eth0 add --cookie 1 --match in_port=0 --actions output:1 || echo "DPACC-NET-FAIL add1"
/dpacc/dpacc flow --iface eth0 add --cookie 2 --match in_port=1 --actions output:0 || echo "DPACC-NET-FAIL add2"
if ping -c 3 -W 5 10.9.7.1; then echo "DPACC-NET-PING ok"; else echo "DPACC-NET-PING failed"; fi
/dpacc/dpacc flow --iface eth0 stats --cookie 1
/dpacc/dpacc flow --iface eth0 stats --cookie 2
echo "DPACC-NET-DONE"
"#;

#[test]
fn stock_guest_virtio_net_programs_its_flows_and_reaches_a_namespace() {
    if !qemu_or_skip() {
        return;
    }
    let Some(net) = Net::start("q", 7) else {
        return;
    };
    let b = NetGuest {
        run: "net_guest",
        script: RUN,
        socket: &net.socket,
        mac: "52:54:00:dc:ac:07",
        queues: 1,
        tag: "DPACC-NET",
    }
    .boot(&["bytes from"]);
    let log = &b.serial;
    assert!(log.contains("8 tables, at most 64 flows"), "{}", b.diag());
    assert!(
        log.contains("DPACC-NET-PING ok"),
        "the guest could not reach the namespace\n{}",
        b.diag()
    );
    let count = |cookie| flow_packets(log, cookie);
    // ARP + 3 echo requests out, ARP reply + 3 echo replies in: all through the flows.
    assert!(
        count(1) >= 4 && count(2) >= 4,
        "flow counters {} / {}\n{}",
        count(1),
        count(2),
        b.diag()
    );
}
