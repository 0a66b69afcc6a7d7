//! The operator's policy for one vNF (micro-segmentation): rule lists the host operator sets
//! through the management API and the vNF can neither read nor change (its control protocol
//! has no message for them). See spec/fastpath.md, "Operator policy".
//!
//! *Ingress* rules see every frame entering the vNF's instance from an uplink, before the
//! instance's tables (and their caches). *Egress* rules see every frame leaving the instance
//! towards an uplink (flow hits, group buckets, table misses are not outputs; PACKET_OUTs of
//! the vNF, direct or through the tables), after the tables' rewrites. Frames between the
//! vNF's own port and its instance are inside the vNF and not policed. The first matching
//! rule of a list decides; a frame no rule matches gets the list's default action.

use super::flow::Match;

/// Most rules in one list (ingress or egress).
pub const MAX_RULES: usize = 1024;

/// What a rule does with a frame it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Let it through (to the tables on ingress; out of the uplink on egress).
    Allow,
    /// Drop it.
    Deny,
    /// Let it through while the rule's token bucket has credit, else drop it. The bucket is
    /// shared by every lane of the instance: the limit holds for the vNF as a whole.
    RateLimit {
        /// Packets or bytes per second.
        rate: u64,
        /// What `rate` counts.
        unit: RateUnit,
        /// Credit that may build up while the rule is idle (packets or bytes; 0: a twentieth
        /// of a second at `rate`).
        burst: u64,
    },
}

/// What a rate limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateUnit {
    /// Frames.
    Packets,
    /// Frame bytes (Ethernet header included, no virtio-net header).
    Bytes,
}

/// One rule: a match on the frame's fields and what to do.
///
/// `m.in_port` names the uplink (port 1..) the frame arrives on (ingress) or leaves through
/// (egress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// What frames the rule applies to (every field optional).
    pub m: Match,
    /// What it does.
    pub action: PolicyAction,
}

/// One direction's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleList {
    /// In order: the first match decides.
    pub rules: Vec<PolicyRule>,
    /// For frames no rule matches.
    pub default: PolicyAction,
}

impl Default for RuleList {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: PolicyAction::Allow,
        }
    }
}

impl RuleList {
    /// Whether the list lets every frame through untouched (nothing to evaluate).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.default == PolicyAction::Allow
    }
}

/// A vNF's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Frames entering the instance from uplinks.
    pub ingress: RuleList,
    /// Frames leaving the instance towards uplinks.
    pub egress: RuleList,
}

/// Why a policy was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// More than [`MAX_RULES`] rules in a list.
    #[error("{0} rules in one list (at most {MAX_RULES})")]
    TooManyRules(usize),
    /// A rate limit of 0.
    #[error("a rate limit needs a rate above 0")]
    ZeroRate,
    /// The driver has no operator policy.
    #[error("this fast-path driver has no operator policy")]
    Unsupported,
}

impl Policy {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for l in [&self.ingress, &self.egress] {
            if l.rules.len() > MAX_RULES {
                return Err(PolicyError::TooManyRules(l.rules.len()));
            }
            let acts = l.rules.iter().map(|r| r.action).chain([l.default]);
            for a in acts {
                if let PolicyAction::RateLimit { rate: 0, .. } = a {
                    return Err(PolicyError::ZeroRate);
                }
            }
        }
        Ok(())
    }
}

/// Counters of one rule (or a list's default), summed over the lanes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// Frames the rule matched.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, frames it dropped (deny, or over its rate).
    pub denies: u64,
}

/// Counters of one direction: per rule, in order, then the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCounters {
    /// Per rule.
    pub rules: Vec<RuleCounters>,
    /// Frames no rule matched.
    pub default: RuleCounters,
}

/// Counters of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Ingress.
    pub ingress: ListCounters,
    /// Egress.
    pub egress: ListCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        let mut p = Policy::default();
        assert!(p.ingress.is_open() && p.validate().is_ok());
        p.egress.default = PolicyAction::RateLimit {
            rate: 0,
            unit: RateUnit::Packets,
            burst: 0,
        };
        assert_eq!(p.validate(), Err(PolicyError::ZeroRate));
        p.egress.default = PolicyAction::Deny;
        p.ingress.rules = vec![
            PolicyRule {
                m: Match::default(),
                action: PolicyAction::Allow
            };
            MAX_RULES + 1
        ];
        assert_eq!(p.validate(), Err(PolicyError::TooManyRules(MAX_RULES + 1)));
    }
}
