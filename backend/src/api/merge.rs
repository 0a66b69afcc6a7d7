//! Prometheus text expositions (0.0.4) of several processes gathered into one (`--isolate`,
//! ADR 0018): each metric family once, with the metadata (`# HELP`, `# TYPE`, `# UNIT`) of
//! the first exposition that has it, followed by the samples of every exposition in order; a
//! series (name and labels) already given by an earlier exposition is left out, so the
//! supervisor's own series come first and win (e.g. `dpacc_vnfs`, which every vNF process
//! reports as 1).

use std::collections::{HashMap, HashSet};

#[derive(Default)]
struct Family {
    meta: Vec<String>,
    /// Which of HELP, TYPE, UNIT it has.
    kinds: HashSet<String>,
    samples: Vec<String>,
}

/// The series a sample line names: up to the end of its labels, or its name.
fn series(line: &str) -> &str {
    match (line.find('{'), line.rfind('}')) {
        (Some(open), Some(close)) if open < close => &line[..=close],
        _ => line.split_whitespace().next().unwrap_or(line),
    }
}

/// `parts` (each a whole exposition) as one exposition.
pub fn merge(parts: &[&str]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut eof = false;
    for part in parts {
        let mut current: Option<String> = None;
        for line in part.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if line == "# EOF" {
                eof = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (kind, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                if !matches!(kind, "HELP" | "TYPE" | "UNIT") || name.is_empty() {
                    continue;
                }
                let f = families.entry(name.to_string()).or_insert_with(|| {
                    order.push(name.to_string());
                    Family::default()
                });
                if f.kinds.insert(kind.to_string()) {
                    f.meta.push(line.to_string());
                }
                current = Some(name.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            // A sample belongs to the family whose metadata came last (its name may carry
            // a suffix: `_total`, `_bucket`...); one before any metadata to its own name.
            let name = current
                .clone()
                .unwrap_or_else(|| series(line).split('{').next().unwrap_or("").to_string());
            if !seen.insert(series(line).to_string()) {
                continue;
            }
            families
                .entry(name.clone())
                .or_insert_with(|| {
                    order.push(name.clone());
                    Family::default()
                })
                .samples
                .push(line.to_string());
        }
    }
    let mut out = String::new();
    for name in &order {
        if let Some(f) = families.get(name) {
            for l in f.meta.iter().chain(&f.samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    if eof {
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_once_with_every_process_series() {
        let sup = "# HELP dpacc_vnfs vNFs\n# TYPE dpacc_vnfs gauge\ndpacc_vnfs 2\n\
                   # HELP dpacc_vnf_process_up up\n# TYPE dpacc_vnf_process_up gauge\n\
                   dpacc_vnf_process_up{vnf=\"a\"} 1\ndpacc_vnf_process_up{vnf=\"b\"} 0\n# EOF\n";
        let a = "# HELP dpacc_vnfs vNFs\n# TYPE dpacc_vnfs gauge\ndpacc_vnfs 1\n\
                 # HELP dpacc_vnf_drops Drops.\n# TYPE dpacc_vnf_drops counter\n\
                 dpacc_vnf_drops_total{vnf=\"a\",reason=\"policy\"} 3\n\
                 dpacc_vnf_drops_total{vnf=\"a\",reason=\"flow\"} 0\n\
                 # HELP dpacc_vnf_up Up.\n# TYPE dpacc_vnf_up gauge\ndpacc_vnf_up{vnf=\"a\"} 1\n# EOF\n";
        let c = a.replace("\"a\"", "\"c\"").replace(" 3\n", " 7\n");
        let m = merge(&[sup, a, &c]);
        assert_eq!(
            m,
            "# HELP dpacc_vnfs vNFs\n# TYPE dpacc_vnfs gauge\ndpacc_vnfs 2\n\
             # HELP dpacc_vnf_process_up up\n# TYPE dpacc_vnf_process_up gauge\n\
             dpacc_vnf_process_up{vnf=\"a\"} 1\ndpacc_vnf_process_up{vnf=\"b\"} 0\n\
             # HELP dpacc_vnf_drops Drops.\n# TYPE dpacc_vnf_drops counter\n\
             dpacc_vnf_drops_total{vnf=\"a\",reason=\"policy\"} 3\n\
             dpacc_vnf_drops_total{vnf=\"a\",reason=\"flow\"} 0\n\
             dpacc_vnf_drops_total{vnf=\"c\",reason=\"policy\"} 7\n\
             dpacc_vnf_drops_total{vnf=\"c\",reason=\"flow\"} 0\n\
             # HELP dpacc_vnf_up Up.\n# TYPE dpacc_vnf_up gauge\n\
             dpacc_vnf_up{vnf=\"a\"} 1\ndpacc_vnf_up{vnf=\"c\"} 1\n# EOF\n"
        );
        // Nothing from the processes: the supervisor's alone; nothing at all: empty.
        assert_eq!(merge(&[sup]), sup);
        assert_eq!(merge(&[]), "");
    }

    #[test]
    fn random_text_never_panics_and_merges_idempotently() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: &[u8] = b"# HELPTYPEUNITEOF{}=\"\n _total0123abc";
        for _ in 0..2000 {
            let text: String = (0..(x % 200))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize] as char
                })
                .collect();
            let once = merge(&[&text]);
            assert_eq!(merge(&[&once, &text]), once, "{text:?}");
        }
    }

    #[test]
    fn garbage_and_label_values_with_braces_do_not_confuse_it() {
        let a = "# TYPE x gauge\nx{v=\"}{ \"} 1\n# a comment\nlonely 3\n\n";
        let m = merge(&[a, a, "#\n# HELP\n# TYPE  \n"]);
        assert_eq!(m, "# TYPE x gauge\nx{v=\"}{ \"} 1\nlonely 3\n");
    }
}
