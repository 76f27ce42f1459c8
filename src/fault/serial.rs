//! Owns the process-wide locks that serialise a fault's prepare → inject → verify per shared host
//! resource (a filesystem, a network device, the host's stress budget), so that two faults applied
//! at once each decide against what the other already took.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

static HELD: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static FREED: Condvar = Condvar::new();

/// A held lock on one resource key; dropping it lets the next fault on that key go. A fault's
/// `Prepared` keeps it, so it is held from prepare until the agent drops the prepared fault after
/// verifying it (or after a failure).
#[derive(Debug)]
pub(crate) struct Held {
    key: String,
}

/// Waits until no other fault of this process holds `key`, then holds it.
pub(crate) fn hold(key: String) -> Held {
    let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
    while held.get_or_insert_with(HashSet::new).contains(&key) {
        held = FREED.wait(held).unwrap_or_else(PoisonError::into_inner);
    }
    held.get_or_insert_with(HashSet::new).insert(key.clone());
    Held { key }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = held.as_mut() {
            set.remove(&self.key);
        }
        FREED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn holders_of_one_key_never_overlap_and_other_keys_do_not_wait() {
        let inside = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (inside, most) = (inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _held = hold("test:one".to_owned());
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        let _a = hold("test:a".to_owned());
        let _b = hold("test:b".to_owned());
    }
}
