//! The management API's JSON bodies (spec/api.md, spec/openapi.yaml) and their mapping to
//! the fast path's types. Unknown fields are refused, never ignored.

use std::net::IpAddr;

use dpacc_spec::fastpath::flow::{Match, Prefix};
use dpacc_spec::fastpath::policy::{
    ListCounters, Policy, PolicyAction, PolicyCounters, PolicyRule, RateUnit, RuleCounters,
    RuleList,
};
use serde::{Deserialize, Serialize};

/// Why a body does not describe a valid request (400 unless said otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// A prefix that is not `ADDRESS[/LENGTH]` with a length in range.
    #[error("bad prefix '{0}': expected an IPv4 or IPv6 address with an optional /LENGTH")]
    Prefix(String),
    /// An IP protocol name we do not know.
    #[error("unknown IP protocol '{0}': use a number or tcp, udp, icmp, icmpv6, esp")]
    Proto(String),
    /// A rule whose action and rate fields do not go together.
    #[error("{0}")]
    Rule(&'static str),
    /// A port 0 in a rule (port 0 is the vNF itself: its frames are not policed).
    #[error("a rule's port names an uplink (1..); port 0 is the vNF's own")]
    Port,
}

/// `PUT /vnfs/{name}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VnfRequest {
    /// Path of the vNF's vhost-user socket.
    pub socket: String,
    /// Uplinks, `tap:NAME` or `vhost:SOCKET`, ports 1.. in order.
    #[serde(default)]
    pub uplinks: Vec<String>,
    /// Flow quota (default: the daemon's `--max-flows`).
    #[serde(default)]
    pub max_flows: Option<u64>,
}

/// A vNF as `GET /vnfs` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VnfInfo {
    /// Its name.
    pub name: String,
    /// Its vhost-user socket.
    pub socket: String,
    /// Its uplinks.
    pub uplinks: Vec<String>,
    /// Its flow quota.
    pub max_flows: u64,
    /// Queue pairs (and workers).
    pub queue_pairs: u16,
    /// Flows installed now.
    pub flows: u64,
    /// `running`, or `failed` (then `error` says why); with `--isolate` also `starting`
    /// (its process is up, its vNF not yet) and `restarting` (its process is down).
    pub state: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `--isolate`: the process serving it (absent while it is down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// With `--isolate`: how many times its process was restarted after it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
}

/// An IP protocol: a number or a name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ProtoJson {
    /// 0..=255.
    Number(u8),
    /// tcp, udp, icmp, icmpv6, esp.
    Name(String),
}

/// A match: every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MatchJson {
    /// The uplink (1..) the frame arrives on (ingress) or leaves through (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// EtherType (after any VLAN tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eth_type: Option<u16>,
    /// VLAN id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Source prefix, `10.0.0.0/8`, `2001:db8::/32`, or an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// IP protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<ProtoJson>,
    /// TCP/UDP source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// TCP/UDP destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// ESP SPI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spi: Option<u32>,
}

/// What a rule (or a list's default) does.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionJson {
    /// Let it through.
    Allow,
    /// Drop it.
    Deny,
    /// Let it through within `packets_per_sec` or `bytes_per_sec`.
    RateLimit,
}

/// Counters of a rule, in `GET .../policy` (ignored in a `PUT`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct CountersJson {
    /// Frames matched.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, dropped.
    pub denies: u64,
}

impl From<RuleCounters> for CountersJson {
    fn from(c: RuleCounters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            denies: c.denies,
        }
    }
}

/// A rule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleJson {
    /// What frames it applies to (absent: all).
    #[serde(default, rename = "match")]
    pub m: MatchJson,
    /// What it does.
    pub action: ActionJson,
    /// Rate limit in frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_sec: Option<u64>,
    /// Rate limit in bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Credit that builds up while idle, in the rate's unit (default: 1/20 s of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Its counters (output only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<CountersJson>,
}

/// A direction's rules.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListJson {
    /// First match wins.
    #[serde(default)]
    pub rules: Vec<RuleJson>,
    /// For frames no rule matches: `allow` (default) or `deny`.
    #[serde(default = "allow")]
    pub default: ActionJson,
    /// Counters of the default (output only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_counters: Option<CountersJson>,
}

fn allow() -> ActionJson {
    ActionJson::Allow
}

impl Default for ListJson {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: ActionJson::Allow,
            default_counters: None,
        }
    }
}

/// `PUT/GET /vnfs/{name}/policy`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyJson {
    /// Frames entering the vNF's instance from its uplinks.
    #[serde(default)]
    pub ingress: ListJson,
    /// Frames leaving the instance towards its uplinks.
    #[serde(default)]
    pub egress: ListJson,
}

fn prefix(s: &str) -> Result<Prefix, JsonError> {
    let bad = || JsonError::Prefix(s.to_string());
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match l {
        Some(l) => l.parse::<u8>().map_err(|_| bad())?,
        None => max,
    };
    if len > max {
        return Err(bad());
    }
    Ok(Prefix { addr, len })
}

/// The IP protocols the API names, both ways: a `PUT` takes the name or the number, a `GET`
/// gives the name (so a policy reads back as it was written).
const PROTO_NAMES: [(&str, u8); 5] = [
    ("tcp", 6),
    ("udp", 17),
    ("icmp", 1),
    ("icmpv6", 58),
    ("esp", 50),
];

fn proto(p: &ProtoJson) -> Result<u8, JsonError> {
    match p {
        ProtoJson::Number(n) => Ok(*n),
        ProtoJson::Name(n) => PROTO_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(n))
            .map(|&(_, number)| number)
            .ok_or_else(|| JsonError::Proto(n.clone())),
    }
}

fn proto_json(number: u8) -> ProtoJson {
    match PROTO_NAMES.iter().find(|&&(_, n)| n == number) {
        Some((name, _)) => ProtoJson::Name((*name).to_owned()),
        None => ProtoJson::Number(number),
    }
}

impl MatchJson {
    /// The match it describes.
    pub fn to_match(&self) -> Result<Match, JsonError> {
        if self.port == Some(0) {
            return Err(JsonError::Port);
        }
        Ok(Match {
            in_port: self.port,
            eth_type: self.eth_type,
            vlan: self.vlan,
            src: self.src.as_deref().map(prefix).transpose()?,
            dst: self.dst.as_deref().map(prefix).transpose()?,
            proto: self.proto.as_ref().map(proto).transpose()?,
            sport: self.sport,
            dport: self.dport,
            spi: self.spi,
        })
    }

    fn of(m: &Match) -> Self {
        let pre = |p: &Prefix| format!("{}/{}", p.addr, p.len);
        Self {
            port: m.in_port,
            eth_type: m.eth_type,
            vlan: m.vlan,
            src: m.src.as_ref().map(pre),
            dst: m.dst.as_ref().map(pre),
            proto: m.proto.map(proto_json),
            sport: m.sport,
            dport: m.dport,
            spi: m.spi,
        }
    }
}

impl RuleJson {
    fn action(&self) -> Result<PolicyAction, JsonError> {
        let rate = match (self.packets_per_sec, self.bytes_per_sec) {
            (Some(r), None) => Some((r, RateUnit::Packets)),
            (None, Some(r)) => Some((r, RateUnit::Bytes)),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(JsonError::Rule(
                    "a rate limit has packets_per_sec or bytes_per_sec, not both",
                ))
            }
        };
        match (self.action, rate) {
            (ActionJson::Allow, None) if self.burst.is_none() => Ok(PolicyAction::Allow),
            (ActionJson::Deny, None) if self.burst.is_none() => Ok(PolicyAction::Deny),
            (ActionJson::RateLimit, Some((0, _))) => {
                Err(JsonError::Rule("a rate limit needs a rate above 0"))
            }
            (ActionJson::RateLimit, Some((rate, unit))) => Ok(PolicyAction::RateLimit {
                rate,
                unit,
                burst: self.burst.unwrap_or(0),
            }),
            (ActionJson::RateLimit, None) => Err(JsonError::Rule(
                "rate_limit needs packets_per_sec or bytes_per_sec",
            )),
            _ => Err(JsonError::Rule(
                "packets_per_sec, bytes_per_sec and burst go with rate_limit only",
            )),
        }
    }

    fn of(r: &PolicyRule, c: Option<RuleCounters>) -> Self {
        let (action, pps, bps, burst) = match r.action {
            PolicyAction::Allow => (ActionJson::Allow, None, None, None),
            PolicyAction::Deny => (ActionJson::Deny, None, None, None),
            PolicyAction::RateLimit { rate, unit, burst } => {
                let burst = (burst != 0).then_some(burst);
                match unit {
                    RateUnit::Packets => (ActionJson::RateLimit, Some(rate), None, burst),
                    RateUnit::Bytes => (ActionJson::RateLimit, None, Some(rate), burst),
                }
            }
        };
        Self {
            m: MatchJson::of(&r.m),
            action,
            packets_per_sec: pps,
            bytes_per_sec: bps,
            burst,
            counters: c.map(Into::into),
        }
    }
}

impl ListJson {
    fn to_list(&self) -> Result<RuleList, JsonError> {
        let default = match self.default {
            ActionJson::Allow => PolicyAction::Allow,
            ActionJson::Deny => PolicyAction::Deny,
            ActionJson::RateLimit => {
                return Err(JsonError::Rule(
                    "a default is allow or deny (put a rate limit in a rule without a match)",
                ))
            }
        };
        let rules = self
            .rules
            .iter()
            .map(|r| {
                Ok(PolicyRule {
                    m: r.m.to_match()?,
                    action: r.action()?,
                })
            })
            .collect::<Result<_, JsonError>>()?;
        Ok(RuleList { rules, default })
    }

    fn of(l: &RuleList, c: Option<&ListCounters>) -> Self {
        Self {
            rules: l
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| RuleJson::of(r, c.and_then(|c| c.rules.get(i).copied())))
                .collect(),
            default: match l.default {
                PolicyAction::Deny => ActionJson::Deny,
                _ => ActionJson::Allow,
            },
            default_counters: c.map(|c| c.default.into()),
        }
    }
}

impl PolicyJson {
    /// The policy it describes (limits are checked by [`Policy::validate`]).
    pub fn to_policy(&self) -> Result<Policy, JsonError> {
        Ok(Policy {
            ingress: self.ingress.to_list()?,
            egress: self.egress.to_list()?,
        })
    }

    /// `p` with its counters.
    pub fn of(p: &Policy, c: Option<&PolicyCounters>) -> Self {
        Self {
            ingress: ListJson::of(&p.ingress, c.map(|c| &c.ingress)),
            egress: ListJson::of(&p.egress, c.map(|c| &c.egress)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str) -> Result<Policy, String> {
        let j: PolicyJson = serde_json::from_str(s).map_err(|e| e.to_string())?;
        j.to_policy().map_err(|e| e.to_string())
    }

    #[test]
    fn a_policy_maps_to_rules_and_back() {
        let p = policy(
            r#"{"ingress": {"rules": [
                    {"match": {"port": 1, "src": "10.0.0.0/8", "proto": "tcp", "dport": 22}, "action": "deny"},
                    {"match": {"dst": "2001:db8::1"}, "action": "rate_limit", "bytes_per_sec": 1000000, "burst": 3000},
                    {"action": "rate_limit", "packets_per_sec": 100}
                ], "default": "deny"},
                "egress": {"rules": [{"match": {"proto": 17, "sport": 53}, "action": "allow"}]}}"#,
        )
        .unwrap();
        let r = &p.ingress.rules;
        assert_eq!(r[0].m.in_port, Some(1));
        assert_eq!(r[0].m.proto, Some(6));
        assert_eq!(r[0].m.src.unwrap().len, 8);
        assert_eq!(r[0].action, PolicyAction::Deny);
        assert_eq!(r[1].m.dst.unwrap().len, 128);
        assert_eq!(
            r[1].action,
            PolicyAction::RateLimit {
                rate: 1_000_000,
                unit: RateUnit::Bytes,
                burst: 3000
            }
        );
        assert_eq!(r[2].m, Match::default());
        assert_eq!(p.ingress.default, PolicyAction::Deny);
        assert_eq!(p.egress.default, PolicyAction::Allow);
        // Back to JSON (with counters) and in again: the same policy.
        let one = RuleCounters {
            packets: 1,
            bytes: 60,
            denies: 1,
        };
        let c = PolicyCounters {
            ingress: ListCounters {
                rules: vec![one; 3],
                default: one,
            },
            egress: ListCounters {
                rules: vec![one],
                default: RuleCounters::default(),
            },
        };
        let out = serde_json::to_string(&PolicyJson::of(&p, Some(&c))).unwrap();
        let one_json = r#""counters":{"packets":1,"bytes":60,"denies":1}"#;
        assert_eq!(out.matches(one_json).count(), 4, "{out}");
        assert!(out.contains("\"counters\""), "{out}");
        // Known protocols read back by name (as written), others as numbers.
        assert!(out.contains(r#""proto":"tcp""#), "{out}");
        assert!(out.contains(r#""proto":"udp""#), "{out}");
        let odd = policy(r#"{"egress": {"rules": [{"match": {"proto": 132}, "action": "deny"}]}}"#)
            .unwrap();
        let odd = serde_json::to_string(&PolicyJson::of(&odd, None)).unwrap();
        assert!(odd.contains(r#""proto":132"#), "{odd}");
        assert_eq!(policy(&out).unwrap(), p);
        assert_eq!(policy("{}").unwrap(), Policy::default());
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        for (body, want) in [
            (
                r#"{"ingress": {"rules": [{"action": "maybe"}]}}"#,
                "unknown variant",
            ),
            (
                r#"{"ingress": {"rules": [{"action": "deny", "colour": 1}]}}"#,
                "unknown field",
            ),
            (r#"{"ingres": {}}"#, "unknown field"),
            (
                r#"{"ingress": {"rules": [{"match": {"src": "10.0.0.0/33"}, "action": "deny"}]}}"#,
                "bad prefix",
            ),
            (
                r#"{"ingress": {"rules": [{"match": {"src": "ten"}, "action": "deny"}]}}"#,
                "bad prefix",
            ),
            (
                r#"{"ingress": {"rules": [{"match": {"proto": "sctp"}, "action": "deny"}]}}"#,
                "unknown IP protocol",
            ),
            (
                r#"{"ingress": {"rules": [{"match": {"dport": 70000}, "action": "deny"}]}}"#,
                "invalid value",
            ),
            (
                r#"{"ingress": {"rules": [{"match": {"port": 0}, "action": "deny"}]}}"#,
                "port 0",
            ),
            (
                r#"{"ingress": {"rules": [{"action": "rate_limit"}]}}"#,
                "needs packets_per_sec",
            ),
            (
                r#"{"ingress": {"rules": [{"action": "rate_limit", "packets_per_sec": 0}]}}"#,
                "above 0",
            ),
            (
                r#"{"ingress": {"rules": [{"action": "rate_limit", "packets_per_sec": 1, "bytes_per_sec": 1}]}}"#,
                "not both",
            ),
            (
                r#"{"ingress": {"rules": [{"action": "deny", "packets_per_sec": 1}]}}"#,
                "rate_limit only",
            ),
            (
                r#"{"egress": {"default": "rate_limit"}}"#,
                "a default is allow or deny",
            ),
            ("[", "EOF"),
        ] {
            let e = policy(body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn a_vnf_request_refuses_unknown_fields() {
        let r: VnfRequest =
            serde_json::from_str(r#"{"socket": "/s", "uplinks": ["tap:a"], "max_flows": 5}"#)
                .unwrap();
        assert_eq!(r.max_flows, Some(5));
        assert!(serde_json::from_str::<VnfRequest>(r#"{"socket": "/s", "mac": 1}"#).is_err());
        assert!(serde_json::from_str::<VnfRequest>(r#"{"uplinks": []}"#).is_err());
        assert!(
            serde_json::from_str::<VnfRequest>(r#"{"socket": "/s", "max_flows": -1}"#).is_err()
        );
    }
}
