//! Parsing `/proc/crypto`: which kernel driver implements each algorithm.

/// One `/proc/crypto` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Algorithm name (`cbc(aes)`).
    pub name: String,
    /// Implementation (`cbc(aes-aesni)`, `virtio_crypto_aes_cbc`, `qat_aes_cbc`...).
    pub driver: String,
    /// Kernel module (`kernel` for built-in).
    pub module: String,
    /// Priority: the kernel picks the highest.
    pub priority: i32,
    /// `skcipher`, `aead`, `shash`, `ahash`, ...
    pub kind: String,
}

/// Parses the text of `/proc/crypto`. Unknown fields are ignored; incomplete entries skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut e = Entry {
            name: String::new(),
            driver: String::new(),
            module: String::new(),
            priority: 0,
            kind: String::new(),
        };
        for line in block.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "name" => e.name = v,
                "driver" => e.driver = v,
                "module" => e.module = v,
                "priority" => e.priority = v.parse().unwrap_or(0),
                "type" => e.kind = v,
                _ => {}
            }
        }
        if !e.name.is_empty() && !e.driver.is_empty() {
            out.push(e);
        }
    }
    out
}

/// The driver the kernel would pick for `name` (highest priority), if listed.
pub fn best<'a>(entries: &'a [Entry], name: &str) -> Option<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.name == name)
        .max_by_key(|e| e.priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from the Debian 6.1 test guest (QEMU TCG) with a virtio-crypto device.
    const SAMPLE: &str = "name         : cbc(aes)
driver       : virtio_crypto_aes_cbc
module       : virtio_crypto
priority     : 150
refcnt       : 1
selftest     : passed
internal     : no
type         : skcipher
async        : yes
blocksize    : 16

name         : cbc(aes)
driver       : cbc(aes-generic)
module       : kernel
priority     : 100
refcnt       : 1
selftest     : passed
internal     : no
type         : skcipher

name         : sha256
driver       : sha256-generic
module       : kernel
priority     : 100
type         : shash
digestsize   : 32
";

    #[test]
    fn parses_entries_and_picks_the_highest_priority() {
        let e = parse(SAMPLE);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].kind, "shash");
        let b = best(&e, "cbc(aes)").unwrap();
        assert_eq!(
            (b.driver.as_str(), b.priority),
            ("virtio_crypto_aes_cbc", 150)
        );
        assert!(best(&e, "gcm(aes)").is_none());
        assert!(parse("garbage\n\n:::\n").is_empty());
    }
}
