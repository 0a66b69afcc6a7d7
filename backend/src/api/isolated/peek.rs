//! Parallel peeks at the vNF processes (a listing, a scrape).

use std::time::Duration;

/// How long a vNF process may take to answer a listing or a scrape.
pub(super) const PEEK_TIMEOUT: Duration = Duration::from_secs(2);

/// Most vNF processes asked at once by a listing or a scrape.
const PEEKS_AT_ONCE: usize = 8;

/// `f` of every item, [`PEEKS_AT_ONCE`] at a time on threads of their own, in order: a
/// listing or a scrape waits for the slowest process of each group (at most its timeout),
/// not for the sum of all of them.
pub(super) fn peek_all<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for group in items.chunks(PEEKS_AT_ONCE) {
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = group
                .iter()
                .map(|i| {
                    std::thread::Builder::new()
                        .name("api-peek".into())
                        .spawn_scoped(s, move || f(i))
                        .map_err(|_| i)
                })
                .collect();
            for h in handles {
                match h {
                    // A panic is a bug: the request's catch_unwind answers 500.
                    Ok(h) => match h.join() {
                        Ok(v) => out.push(v),
                        Err(p) => std::panic::resume_unwind(p),
                    },
                    // No thread to spare: ask it from here.
                    Err(i) => out.push(f(i)),
                }
            }
        });
    }
    out
}
