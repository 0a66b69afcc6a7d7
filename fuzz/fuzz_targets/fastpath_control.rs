//! The fast-path control-frame decoder and a vNF's instance behind it: sequences of control
//! payloads. Every decoded message re-encodes to itself; every request gets at most one reply
//! (exactly one unless it is a PACKET_OUT), replies decode and echo the txid, and the instance
//! never holds more than its quotas allow.
//!
//! Input: payloads `time step in ms u8 | chunk`, at most 64.

#![no_main]

use std::sync::Arc;

use dpacc_fuzz::Reader;
use dpacc_spec::fastpath::proto::{Body, Message};
use dpacc_spec::fastpath::{Emit, FastPathDriver, InstanceConfig, Quotas};
use dpacc_sw::flow::SwFastPath;
use libfuzzer_sys::fuzz_target;

const QUOTAS: Quotas = Quotas {
    flows: 32,
    groups: 4,
    buckets: 16,
    sas: 4,
    actions: 8,
};

fn round_trips(m: &Message) {
    let mut e = Vec::new();
    m.encode(&mut e);
    let again = Message::decode(&e).expect("an encoded message decodes");
    // The encoder caps error texts at 1024 bytes (and the decoder replaces invalid UTF-8).
    if let Body::Error { msg, .. } = &m.body {
        if msg.len() > 1024 {
            return;
        }
    }
    assert_eq!(&again, m);
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut frames = Vec::new();
    while !r.is_empty() && frames.len() < 64 {
        frames.push((u16::from(r.u8()), r.chunk()));
    }
    // As the backend makes it: through the driver, shared by two lanes.
    let p = SwFastPath::new(Arc::new(dpacc_sw::SwDriver::new()))
        .create_instance(&InstanceConfig {
            name: "fuzz".into(),
            uplinks: 2,
            quotas: QUOTAS,
            lanes: 2,
        })
        .expect("instance");
    let mut now = 0u64;
    let mut out = Vec::new();
    for &(step, bytes) in &frames {
        now += u64::from(step) * 1_000_000;
        let decoded = Message::decode(bytes);
        if let Ok(m) = &decoded {
            round_trips(m);
        }
        out.clear();
        p.control(now, bytes, &mut out);
        let replies: Vec<Message> = out
            .iter()
            .filter_map(|e| match e {
                Emit::Control(c) => Some(Message::decode(c).expect("replies decode")),
                Emit::Frame { .. } => None,
            })
            .collect();
        let packet_out = matches!(
            decoded,
            Ok(Message {
                body: Body::PacketOut { .. },
                ..
            })
        );
        assert!(
            replies.len() == 1 || (packet_out && replies.is_empty()),
            "{} replies to {decoded:?}",
            replies.len()
        );
        let txid = bytes
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        for r in &replies {
            assert_eq!(r.txid, txid, "the reply echoes the txid");
        }
        if step % 7 == 3 {
            out.clear();
            p.expire(now, &mut out);
        }
        let u = p.usage();
        assert!(u.flows as usize <= QUOTAS.flows && u.groups as usize <= QUOTAS.groups);
        assert!(u.buckets as usize <= QUOTAS.buckets && u.sas as usize <= QUOTAS.sas);
        assert!(u.memory <= u.max_memory);
        assert_eq!(u.flows as usize, p.flow_count());
        if step % 31 == 30 {
            p.clear();
            assert_eq!(p.usage().flows + p.usage().groups + p.usage().sas, 0);
        }
    }
});
