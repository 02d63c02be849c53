//! The watched bundle directory. New files are noticed through filesystem
//! events (inotify via `notify`) and by a periodic scan that also works where
//! events do not (network filesystems, `watch.events: false`).
//!
//! A file is acted on only once complete:
//! - it was renamed into the directory (the recommended way: write
//!   `x.bundle.part`, then rename), or
//! - its writer closed it after writing (an in-place copy like `cp`), or
//! - its size and mtime have not changed for `watch.settle_s` (the fallback
//!   when no events are seen).
//!
//! A complete file whose tar is not whole yet (a writer that paused) is
//! re-checked until it has been unchanged for `watch.settle_s`, and only
//! then judged. A file that is judged is first claimed (renamed out of the
//! folder, see [`crate::intake`]): the check reads only the claimed copy.
//!
//! Dotfiles, `*.tmp`, `*.part`, `*.partial`, `*.swp`, `*~` and directories are
//! ignored. An accepted bundle is removed (its copy lives in `state_dir`); a
//! rejected one is moved to `rejected/` under a unique name next to a
//! `.reason` file, and only the newest `watch.keep_rejected` are kept.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::intake::{self, Claim, STOPPED_WHILE_CHECKING};
use crate::liveness::Thread;
use crate::service::{Outcome, Service};
use adaptivenet_onnx::fsutil::write_atomically;

use crate::clock::{rfc3339, unix_now};

/// Where rejected bundles go, under the bundle directory.
pub const REJECTED_DIR: &str = "rejected";

/// Should a file of this name be ignored?
pub fn ignored_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.ends_with('~')
        || [".tmp", ".part", ".partial", ".swp", ".reason"]
            .iter()
            .any(|s| lower.ends_with(s))
}

/// What is known about one candidate file.
#[derive(Debug)]
struct Seen {
    /// Size and mtime at the last scan.
    stat: Option<(u64, SystemTime)>,
    /// When `stat` last changed (or the file was first seen).
    since: Instant,
    /// An event said the file is complete (renamed in, or closed after
    /// writing) and no write followed.
    complete: bool,
}

/// The directory watcher's state (no threads; [`run`] drives it).
pub struct DirWatch {
    dir: PathBuf,
    settle: Duration,
    seen: HashMap<PathBuf, Seen>,
    /// Files that could not be moved away: (path, size, mtime) not to retry.
    stuck: HashSet<(PathBuf, u64, SystemTime)>,
    first_scan: bool,
}

impl DirWatch {
    pub fn new(dir: &Path, settle: Duration) -> DirWatch {
        DirWatch {
            dir: dir.to_path_buf(),
            settle,
            seen: HashMap::new(),
            stuck: HashSet::new(),
            first_scan: true,
        }
    }

    /// Is `path` a direct child of the directory with an eligible name?
    fn eligible(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !ignored_name(n))
    }

    fn entry(&mut self, path: &Path) -> &mut Seen {
        self.seen.entry(path.to_path_buf()).or_insert_with(|| Seen {
            stat: None,
            since: Instant::now(),
            complete: false,
        })
    }

    /// Take one filesystem event into account.
    pub fn on_event(&mut self, event: &notify::Event) {
        let paths = &event.paths;
        match &event.kind {
            EventKind::Modify(ModifyKind::Name(mode)) => {
                let (from, to) = match mode {
                    RenameMode::From => (paths.first(), None),
                    RenameMode::To => (None, paths.first()),
                    RenameMode::Both => (paths.first(), paths.get(1)),
                    _ => match paths.first() {
                        Some(p) if p.exists() => (None, Some(p)),
                        p => (p, None),
                    },
                };
                if let Some(p) = from {
                    self.seen.remove(p);
                }
                if let Some(p) = to.filter(|p| self.eligible(p)) {
                    log::debug!("{}: renamed in", p.display());
                    self.entry(p).complete = true;
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                let ps: Vec<PathBuf> = paths.iter().filter(|p| self.eligible(p)).cloned().collect();
                for p in &ps {
                    log::debug!("{}: closed after writing", p.display());
                    self.entry(p).complete = true;
                }
            }
            EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => {
                let ps: Vec<PathBuf> = paths.iter().filter(|p| self.eligible(p)).cloned().collect();
                for p in &ps {
                    let e = self.entry(p);
                    e.complete = false;
                    e.since = Instant::now();
                }
            }
            EventKind::Remove(_) => {
                for p in paths {
                    self.seen.remove(p);
                }
            }
            _ => {}
        }
    }

    /// Scan the directory; returns the files that are complete now.
    pub fn scan(&mut self) -> Vec<PathBuf> {
        let now = Instant::now();
        let first = std::mem::replace(&mut self.first_scan, false);
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!(
                    "{}: cannot list the bundle directory: {e}",
                    self.dir.display()
                );
                return Vec::new();
            }
        };
        let mut present = HashSet::new();
        let mut ready = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !self.eligible(&path) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let stat = (meta.len(), mtime);
            if self.stuck.contains(&(path.clone(), stat.0, stat.1)) {
                continue;
            }
            present.insert(path.clone());
            let settle = self.settle;
            let e = self.entry(&path);
            if e.stat != Some(stat) {
                let was_known = e.stat.is_some();
                e.stat = Some(stat);
                if was_known {
                    e.since = now;
                }
            }
            // Files already there at start: complete if untouched for `settle`.
            let old_at_start = first
                && SystemTime::now()
                    .duration_since(mtime)
                    .is_ok_and(|age| age >= settle);
            if e.complete || now.duration_since(e.since) >= settle || old_at_start {
                ready.push(path);
            }
        }
        self.seen.retain(|p, _| present.contains(p));
        ready
    }

    /// How long the file has been unchanged (as far as the watch knows).
    pub fn stable_for(&self, path: &Path) -> Duration {
        let by_watch = self
            .seen
            .get(path)
            .map(|e| e.since.elapsed())
            .unwrap_or_default();
        let by_mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or(by_watch);
        // A write not noticed yet still shows in the mtime.
        by_watch.min(by_mtime)
    }

    /// The file is not complete yet after all: check it again once it has
    /// been unchanged for `settle`.
    pub fn defer(&mut self, path: &Path) {
        if let Some(e) = self.seen.get_mut(path) {
            e.complete = false;
        }
    }

    /// Forget a file (after it was handled).
    pub fn forget(&mut self, path: &Path) {
        self.seen.remove(path);
    }

    /// Remember that a file could not be moved away, so it is not retried
    /// until it changes.
    pub fn mark_stuck(&mut self, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path) {
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            self.stuck.insert((path.to_path_buf(), meta.len(), mtime));
        }
        self.seen.remove(path);
    }
}

/// A free name for `name` in `rejected/`: `name`, else `name.UNIXTIME`,
/// else `name.UNIXTIME.K` (two rejections in one second never collide).
fn unique_rejected(rejected: &Path, name: &str) -> PathBuf {
    let taken = |p: &Path| p.exists() || PathBuf::from(format!("{}.reason", p.display())).exists();
    let first = rejected.join(name);
    if !taken(&first) {
        return first;
    }
    let now = unix_now();
    let second = rejected.join(format!("{name}.{now}"));
    if !taken(&second) {
        return second;
    }
    (1u64..)
        .map(|k| rejected.join(format!("{name}.{now}.{k}")))
        .find(|p| !taken(p))
        .unwrap_or(second)
}

/// Move a rejected file to `rejected/` (under a unique name) with a
/// `.reason` file next to it; `name` is the name it was dropped as. The
/// reason is written first, so a rejected bundle never lacks one.
pub fn move_rejected(
    dir: &Path,
    path: &Path,
    name: &str,
    reason: &str,
) -> std::io::Result<PathBuf> {
    let rejected = dir.join(REJECTED_DIR);
    std::fs::create_dir_all(&rejected)?;
    let dest = unique_rejected(&rejected, name);
    let text = format!(
        "{}\nfile: {name}\ntime: {}\nreason: {reason}\n",
        reason,
        rfc3339(unix_now())
    );
    let reason_path = PathBuf::from(format!("{}.reason", dest.display()));
    write_atomically(&reason_path, text.as_bytes()).map_err(std::io::Error::other)?;
    let moved = match std::fs::rename(path, &dest) {
        // The claim folder may be on another file system than the drop folder.
        Err(e) if e.raw_os_error() == Some(18) => {
            adaptivenet_onnx::fsutil::copy_atomically(path, &dest)
                .map_err(std::io::Error::other)
                .and_then(|()| std::fs::remove_file(path))
        }
        other => other,
    };
    if let Err(e) = moved {
        let _ = std::fs::remove_file(&reason_path);
        return Err(e);
    }
    let _ = adaptivenet_onnx::fsutil::sync_dir(&rejected);
    Ok(dest)
}

/// Keep the newest `keep` rejected bundles (by the time of their `.reason`)
/// and remove the others with their reasons.
pub fn prune_rejected(dir: &Path, keep: usize) {
    let rejected = dir.join(REJECTED_DIR);
    let Ok(entries) = std::fs::read_dir(&rejected) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".reason"))
        .map(|p| {
            let reason = PathBuf::from(format!("{}.reason", p.display()));
            let t = std::fs::metadata(&reason)
                .or_else(|_| std::fs::metadata(&p))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (t, p)
        })
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    let excess = files.len() - keep;
    for (_, p) in files.into_iter().take(excess) {
        log::info!("{}: removed (watch.keep_rejected is {keep})", p.display());
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(format!("{}.reason", p.display()));
    }
}

/// Does an event kind change the folder (rather than only read it)?
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        _ => true,
    }
}

/// Is the tar at `path` whole (its headers, entries and end marker)? Reads
/// the headers only.
fn tar_is_whole(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    adaptivenet_onnx::bundle::archive::index_entries(std::io::BufReader::new(f), len)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Reject a claimed bundle: into `rejected/` with its reason.
fn reject_claim(svc: &Service, claim: &Claim, reason: &str) {
    let dir = &svc.config.bundle_dir;
    // The files and the record appear together (see `Shared::reject_with`).
    let moved = svc.shared.reject_with(&claim.name, reason, || {
        let moved = move_rejected(dir, &claim.path, &claim.name, reason);
        prune_rejected(dir, svc.config.watch.keep_rejected);
        moved
    });
    match moved {
        Ok(dest) => log::info!("moved {} to {}", claim.name, dest.display()),
        Err(e) => log::error!(
            "{}: cannot move it to {REJECTED_DIR}/ ({e}); removing it",
            claim.path.display()
        ),
    }
}

/// Check and install a claimed bundle (its marker is written first), then
/// clear the claim.
fn check_claim(svc: &Service, claim: &Claim) {
    if let Err(e) = claim.mark() {
        log::error!("{}: cannot record the attempt: {e}", claim.path.display());
    }
    match svc.consider(&claim.path) {
        Outcome::Accepted { .. } | Outcome::AlreadyInstalled | Outcome::Gone => {}
        Outcome::Rejected(reason) => reject_claim(svc, claim, &reason),
    }
    claim.finish();
}

/// Handle one complete file: claim it, then verify and install it, or
/// reject it.
fn handle(svc: &Service, watch: &mut DirWatch, path: &Path) {
    let dir = svc.config.bundle_dir.clone();
    // A writer that paused leaves a tar that is not whole yet: look again
    // once it has been unchanged for `settle`.
    if let Err(e) = tar_is_whole(path) {
        let stable = watch.stable_for(path);
        if stable < watch.settle {
            log::info!(
                "{}: not a whole bundle yet ({e}); checking again once unchanged for {:.1} s",
                path.display(),
                watch.settle.as_secs_f64()
            );
            watch.defer(path);
            return;
        }
    }
    let claim = match intake::claim(&svc.state.dir, &dir, path) {
        Ok(Some(c)) => c,
        Ok(None) => return watch.forget(path),
        Err(e) => {
            log::error!("{}: cannot claim it: {e}", path.display());
            return watch.mark_stuck(path);
        }
    };
    watch.forget(path);
    check_claim(svc, &claim);
}

/// Deal with claims an earlier run left: one whose checks had started is
/// rejected (never retried: it may be what stopped the daemon), unless it
/// is the installed bundle; one never checked is checked now.
pub fn recover(svc: &Service) {
    // The installed files themselves (their records may lag behind them).
    let installed: Vec<String> = [
        svc.state.active_bundle_path(),
        svc.state.previous_bundle_path(),
    ]
    .iter()
    .filter_map(|p| adaptivenet_onnx::bundle::sha256_of_file(p).ok())
    .collect();
    for l in intake::leftovers(&svc.state.dir, &svc.config.bundle_dir) {
        match (l.present, l.marked) {
            (false, _) => {}
            (true, false) => {
                log::info!(
                    "{}: claimed but not checked before a stop; checking it",
                    l.claim.path.display()
                );
                check_claim(svc, &l.claim);
                continue;
            }
            (true, true) => {
                let sha = adaptivenet_onnx::bundle::sha256_of_file(&l.claim.path).ok();
                if sha.is_some_and(|s| installed.contains(&s)) {
                    log::info!("{}: was installed before the stop", l.claim.name);
                } else {
                    reject_claim(svc, &l.claim, STOPPED_WHILE_CHECKING);
                }
            }
        }
        l.claim.finish();
    }
}

/// Watch the bundle directory until `stop` is set (on the calling thread).
pub fn run(svc: Arc<Service>, stop: Arc<AtomicBool>) {
    let dir = svc.config.bundle_dir.clone();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        log::error!("{}: cannot create the bundle directory: {e}", dir.display());
    }
    // Event paths are the watched path joined with the name: use one spelling.
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let w = &svc.config.watch;
    let poll = Duration::from_secs_f64(w.poll_interval_s);
    recover(&svc);
    let mut watch = DirWatch::new(&dir, Duration::from_secs_f64(w.settle_s));
    let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
    // Keep the watcher alive for the whole loop.
    let _watcher = if w.events {
        match notify::recommended_watcher(tx)
            .and_then(|mut wt| wt.watch(&dir, RecursiveMode::NonRecursive).map(|_| wt))
        {
            Ok(wt) => {
                log::info!(
                    "watching {} (events, and a scan every {:.1} s)",
                    dir.display(),
                    w.poll_interval_s
                );
                Some(wt)
            }
            Err(e) => {
                log::warn!(
                    "{}: no filesystem events ({e}); polling every {:.1} s",
                    dir.display(),
                    w.poll_interval_s
                );
                None
            }
        }
    } else {
        log::info!(
            "watching {} by polling every {:.1} s (events disabled)",
            dir.display(),
            w.poll_interval_s
        );
        None
    };
    let mut next_scan = Instant::now();
    let beat = || svc.shared.liveness.beat(Thread::Watcher, poll);
    while !stop.load(Ordering::Relaxed) {
        beat();
        let wait = next_scan
            .saturating_duration_since(Instant::now())
            .min(poll);
        let mut event_seen = false;
        match rx.recv_timeout(wait) {
            Ok(first) => {
                let mut handle_event = |ev: notify::Result<notify::Event>| match ev {
                    Ok(ev) => {
                        log::trace!("event {ev:?}");
                        watch.on_event(&ev);
                        // Reads of the folder (our own scans) raise access
                        // events: only changes call for a scan.
                        event_seen |= is_change(&ev.kind);
                    }
                    Err(e) => log::warn!("{}: watch error: {e}", dir.display()),
                };
                handle_event(first);
                while let Ok(ev) = rx.try_recv() {
                    handle_event(ev);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
        if event_seen || Instant::now() >= next_scan {
            for path in watch.scan() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                handle(&svc, &mut watch, &path);
                beat();
            }
            if Instant::now() >= next_scan {
                next_scan = Instant::now() + poll;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scan until something is complete (bounded).
    fn poll_scan(w: &mut DirWatch) -> Vec<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = w.scan();
            if !v.is_empty() {
                return v;
            }
            assert!(Instant::now() < deadline, "nothing settled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn names_that_are_ignored() {
        for n in [
            ".x",
            "a.tmp",
            "a.part",
            "a.PART",
            "a~",
            "a.swp",
            "a.partial",
            "x.bundle.reason",
        ] {
            assert!(ignored_name(n), "{n}");
        }
        for n in ["a.bundle", "model-v3", "x.tar"] {
            assert!(!ignored_name(n), "{n}");
        }
    }

    #[test]
    fn a_growing_file_is_not_ready_until_it_settles_or_closes() {
        let dir = std::env::temp_dir().join(format!("adaptived-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bundle");
        std::fs::write(&f, b"half").unwrap();
        let mut w = DirWatch::new(&dir, Duration::from_millis(300));
        w.first_scan = false;
        assert!(w.scan().is_empty());
        std::fs::write(&f, b"half and more").unwrap();
        assert!(w.scan().is_empty());
        // A close-after-write event makes it complete at once.
        let ev = notify::Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write)))
            .add_path(f.clone());
        w.on_event(&ev);
        assert_eq!(w.scan(), vec![f.clone()]);
        // A new write resets that; then it settles by time.
        let ev = notify::Event::new(EventKind::Modify(ModifyKind::Data(
            notify::event::DataChange::Any,
        )))
        .add_path(f.clone());
        w.on_event(&ev);
        assert!(w.scan().is_empty());
        let t = Instant::now();
        let settled = poll_scan(&mut w);
        assert_eq!(settled, vec![f.clone()]);
        assert!(t.elapsed() >= Duration::from_millis(250), "settled early");
        // Ignored names never are: `b.part` was written before `c`, so by
        // the time `c` has settled `b.part` would have too.
        std::fs::write(dir.join("b.part"), b"x").unwrap();
        let c = dir.join("c.bundle");
        std::fs::write(&c, b"y").unwrap();
        std::fs::remove_file(&f).unwrap();
        w.forget(&f);
        let mut seen = poll_scan(&mut w);
        seen.sort();
        assert_eq!(seen, vec![c]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
