//! Sketch of the inline / fast-path driver contract (filled in by the inline issue).
//!
//! Each vNF port owns one isolated [`FlowProcessor`]. The backend hands it batches of packets
//! received on the port (or its uplinks); the processor either handles a packet itself
//! (forward, drop, rewrite, ESP encap/decap) or returns it as a miss for the vNF's RX queue.

/// Identifies a port of a backend (a vNF port or an uplink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// What the processor decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (possibly rewritten) packet out of this port.
    Output(PortId),
    /// Drop it.
    Drop,
    /// No flow matched: deliver to the owning vNF (exception path).
    Miss,
}

/// A per-vNF flow processor instance.
pub trait FlowProcessor: Send {
    /// Processes a batch in place; `verdicts[i]` receives the decision for `packets[i]`.
    /// Rewrites may grow a packet up to the capacity of its buffer (ESP encapsulation).
    fn process(&mut self, packets: &mut [&mut [u8]], lens: &mut [usize], verdicts: &mut [Verdict]);
}

/// A fast-path driver creates isolated flow processors.
pub trait FastPathDriver: Send + Sync {
    /// Short name.
    fn name(&self) -> &str;
    /// A new instance for one vNF port, holding at most `max_flows` flows.
    fn create_instance(&self, port: PortId, max_flows: usize) -> Box<dyn FlowProcessor>;
}
