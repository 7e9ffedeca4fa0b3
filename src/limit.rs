//! Fixed-window counters in memory, one per key: how often someone may do
//! something a minute (the web page's forms, the bot's DM commands).
//!
//! Memory is bounded: expired windows are swept when the map grows, and
//! past [`MAX_KEYS`] every count starts over, at most once a window; filled
//! again within it, newcomers count by the group the caller names (the web
//! page: their network) until the window ends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct FixedWindows {
    /// What is limited, for the log line when the map fills up.
    what: &'static str,
    window: Duration,
    counters: Mutex<Counters>,
}

struct Counters {
    windows: HashMap<String, (Instant, u32)>,
    swept_at: Instant,
    cleared_at: Option<Instant>,
}

/// Above this many keys, expired windows are swept, at most once a second
/// (a sweep reads every key).
const SWEEP_AT: usize = 10_000;
/// Keys kept before counts start over (about 10 MB; twice that at most).
/// Someone with more addresses than this (an IPv6 /48 holds 65,536 /64s)
/// can fill the map. Counting every newcomer together then would let that
/// one client shut everyone else out; starting over again and again would
/// leave it no limit at all. Counting newcomers by group does neither.
pub const MAX_KEYS: usize = 100_000;

impl FixedWindows {
    pub fn new(what: &'static str, window: Duration) -> FixedWindows {
        let counters = Counters { windows: HashMap::new(), swept_at: Instant::now(), cleared_at: None };
        FixedWindows { what, window, counters: Mutex::new(counters) }
    }

    /// Counts one hit of `key`; `false` once it is over `limit` in this
    /// window. `group`: what a newcomer counts as when the map filled up
    /// twice within a window (none: counts start over again).
    pub fn hit(&self, key: String, group: Option<String>, limit: u32) -> bool {
        let now = Instant::now();
        let mut counters = self.counters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Counters { windows, swept_at, cleared_at } = &mut *counters;
        if windows.len() >= SWEEP_AT && now.duration_since(*swept_at) >= Duration::from_secs(1) {
            windows.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            *swept_at = now;
        }
        let mut key = key;
        if windows.len() >= MAX_KEYS && !windows.contains_key(&key) {
            let cleared_lately = cleared_at.is_some_and(|at| now.duration_since(at) < self.window);
            match group {
                Some(group) if cleared_lately && windows.len() < 2 * MAX_KEYS => key = group,
                _ => {
                    tracing::warn!(
                        keys = windows.len(),
                        "the {} rate limiter is full (a flood from many sources?): counts start over",
                        self.what
                    );
                    windows.clear();
                    *cleared_at = Some(now);
                }
            }
        }
        let entry = windows.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= limit
    }

    /// Is `key` at `limit` in this window already? Counts nothing.
    pub fn reached(&self, key: &str, limit: u32) -> bool {
        let counters = self.counters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counters.windows.get(key).is_some_and(|(start, hits)| start.elapsed() < self.window && *hits >= limit)
    }

    /// How many keys are counted now.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.counters.lock().unwrap().windows.len()
    }
}
