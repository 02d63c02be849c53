//! Liveness of the daemon's long-lived threads: the bundle watcher, the
//! adaptation loop and the HTTP runtime each beat at their own period, and
//! every supervised thread's panics are counted here. The systemd watchdog
//! pings only while every thread has beaten recently, so one wedged or dead
//! thread (not only the adaptation loop) lets systemd restart the daemon;
//! `/metrics` shows the silence and the panics of each.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::unix_ms;

/// The long-lived threads the watchdog requires alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Thread {
    /// Bundle intake (`watcher::run`).
    Watcher,
    /// The adaptation loop (`adapt::spawn`).
    Adapt,
    /// The async runtime that accepts connections and answers health checks.
    Http,
}

impl Thread {
    pub const ALL: [Thread; 3] = [Thread::Watcher, Thread::Adapt, Thread::Http];

    pub fn name(self) -> &'static str {
        match self {
            Thread::Watcher => "watcher",
            Thread::Adapt => "adapt",
            Thread::Http => "http",
        }
    }
}

impl fmt::Display for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The threads whose panics are counted (the search thread runs once per
/// bundle, so it is supervised but does not beat).
pub const SUPERVISED: [&str; 3] = ["watcher", "adapt", "search"];

#[derive(Clone, Copy, Debug)]
struct Beat {
    at_ms: u64,
    period_ms: u64,
}

#[derive(Default)]
struct Inner {
    beats: BTreeMap<Thread, Beat>,
    panics: BTreeMap<String, u64>,
}

/// The beats and panic counts of the long-lived threads.
#[derive(Default)]
pub struct Liveness {
    inner: Mutex<Inner>,
}

/// A thread the watchdog finds silent: its name and how long (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silent {
    pub thread: Thread,
    pub silent_ms: u64,
}

impl Liveness {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `thread` is alive now and beats again within `period`.
    pub fn beat(&self, thread: Thread, period: Duration) {
        self.beat_at(thread, period, unix_ms());
    }

    fn beat_at(&self, thread: Thread, period: Duration, now_ms: u64) {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.lock().beats.insert(
            thread,
            Beat {
                at_ms: now_ms,
                period_ms,
            },
        );
    }

    /// A supervised thread panicked (it is restarted by `supervise`).
    pub fn panicked(&self, thread: &str) {
        *self.lock().panics.entry(thread.to_string()).or_insert(0) += 1;
    }

    /// Panics of `thread` so far.
    pub fn panics(&self, thread: &str) -> u64 {
        self.lock().panics.get(thread).copied().unwrap_or(0)
    }

    /// Milliseconds since each thread's last beat (`None`: not started yet).
    pub fn silence(&self, now_ms: u64) -> Vec<(Thread, Option<u64>)> {
        let g = self.lock();
        Thread::ALL
            .iter()
            .map(|t| (*t, g.beats.get(t).map(|b| now_ms.saturating_sub(b.at_ms))))
            .collect()
    }

    /// The threads that started and have been silent for longer than three
    /// of their periods plus `grace` (a long bundle check or latency
    /// re-timing legitimately delays a beat). A thread that never beat is
    /// still starting and not counted.
    pub fn silent(&self, now_ms: u64, grace: Duration) -> Vec<Silent> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.lock()
            .beats
            .iter()
            .filter_map(|(t, b)| {
                let silent_ms = now_ms.saturating_sub(b.at_ms);
                let limit = b.period_ms.saturating_mul(3).saturating_add(grace_ms);
                (silent_ms > limit).then_some(Silent {
                    thread: *t,
                    silent_ms,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_silent_only_past_three_periods_plus_the_grace() {
        let l = Liveness::default();
        let s = Duration::from_secs(1);
        l.beat_at(Thread::Watcher, s, 10_000);
        l.beat_at(Thread::Adapt, Duration::from_secs(5), 10_000);
        let grace = Duration::from_secs(2);
        assert!(l.silent(15_000, grace).is_empty());
        assert_eq!(
            l.silent(15_001, grace),
            vec![Silent {
                thread: Thread::Watcher,
                silent_ms: 5_001
            }]
        );
        // The adaptation loop's period is longer: silent only past 17 s.
        assert_eq!(l.silent(27_001, grace).len(), 2);
        // A beat clears it; the HTTP thread never beat and is not counted.
        l.beat_at(Thread::Watcher, s, 27_000);
        assert_eq!(
            l.silent(27_001, grace),
            vec![Silent {
                thread: Thread::Adapt,
                silent_ms: 17_001
            }]
        );
        let silence = l.silence(27_001);
        assert_eq!(silence[2], (Thread::Http, None));
    }

    #[test]
    fn panics_are_counted_per_thread() {
        let l = Liveness::default();
        l.panicked("search");
        l.panicked("search");
        l.panicked("watcher");
        assert_eq!(l.panics("search"), 2);
        assert_eq!(l.panics("watcher"), 1);
        assert_eq!(l.panics("adapt"), 0);
    }
}
