//! Persistent state in `state_dir`, written so that it survives `kill -9` and
//! power loss: every file is written to a temporary name, fsynced, renamed
//! over the old one, and the directory fsynced.
//!
//! ```text
//! state_dir/active.bundle          the active bundle, byte for byte
//! state_dir/active.json            where it came from and when (informational)
//! state_dir/results/<sha256>.json  the search result of a bundle
//! ```
//! The bundle file itself is the truth: on start it is opened and verified
//! again, and its sha256 finds its search result.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::search_api::SearchResult;

pub const ACTIVE_BUNDLE: &str = "active.bundle";
pub const ACTIVE_INFO: &str = "active.json";
pub const RESULTS_DIR: &str = "results";

/// Where the active bundle came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveInfo {
    pub sha256: String,
    pub name: String,
    pub version: u64,
    /// The file name it was dropped as.
    pub source: String,
    /// Unix time of installation.
    pub installed_at: u64,
}

/// An I/O error on a named state file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct StateError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `bytes` to `path` atomically and durably.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(err(&tmp))?;
        f.write_all(bytes).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct State {
    pub dir: PathBuf,
}

impl State {
    /// Open (creating if needed) the state directory; stale temporary files
    /// from an interrupted write are removed.
    pub fn open(dir: &Path) -> Result<State, StateError> {
        std::fs::create_dir_all(dir.join(RESULTS_DIR)).map_err(err(dir))?;
        for d in [dir.to_path_buf(), dir.join(RESULTS_DIR)] {
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with('.') && n.contains(".tmp-") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok(State {
            dir: dir.to_path_buf(),
        })
    }

    pub fn active_bundle_path(&self) -> PathBuf {
        self.dir.join(ACTIVE_BUNDLE)
    }

    fn result_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(RESULTS_DIR).join(format!("{sha256}.json"))
    }

    /// Make `bytes` (a verified bundle) the active bundle.
    pub fn save_active(&self, bytes: &[u8], info: &ActiveInfo) -> Result<(), StateError> {
        write_atomically(&self.active_bundle_path(), bytes)?;
        let json = serde_json::to_vec_pretty(info).unwrap_or_default();
        write_atomically(&self.dir.join(ACTIVE_INFO), &json)
    }

    /// Information about the active bundle, if recorded.
    pub fn active_info(&self) -> Option<ActiveInfo> {
        let text = std::fs::read(self.dir.join(ACTIVE_INFO)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Is there an active bundle?
    pub fn has_active(&self) -> bool {
        self.active_bundle_path().is_file()
    }

    /// Store the search result of a bundle.
    pub fn save_result(&self, result: &SearchResult) -> Result<(), StateError> {
        let path = self.result_path(&result.bundle_sha256);
        let json = serde_json::to_vec_pretty(result).unwrap_or_default();
        write_atomically(&path, &json)
    }

    /// The stored search result of the bundle with this sha256, if any and
    /// made on this device (a different `fingerprint` means search again).
    /// An unreadable result is reported and ignored.
    pub fn load_result(&self, sha256: &str, fingerprint: &str) -> Option<SearchResult> {
        let path = self.result_path(sha256);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<SearchResult>(&bytes) {
            Ok(r) if r.bundle_sha256 == sha256 && r.fingerprint == fingerprint => Some(r),
            Ok(r) if r.bundle_sha256 == sha256 => {
                log::info!(
                    "{}: made on another device (`{}`, this is `{fingerprint}`); searching again",
                    path.display(),
                    r.fingerprint
                );
                None
            }
            Ok(_) => {
                log::warn!(
                    "{}: holds the result of another bundle; ignored",
                    path.display()
                );
                None
            }
            Err(e) => {
                log::warn!(
                    "{}: unreadable search result ({e}); ignored",
                    path.display()
                );
                None
            }
        }
    }

    /// Remove stored results of bundles other than `keep` (sha256s).
    pub fn prune_results(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(self.dir.join(RESULTS_DIR)) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(sha) = n.strip_suffix(".json") {
                if !keep.contains(&sha) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Unix time as RFC 3339 UTC (`2026-11-27T11:04:38Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("adaptived-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = State::open(&dir).unwrap();
        write_atomically(&dir.join("x"), b"one").unwrap();
        write_atomically(&dir.join("x"), b"two").unwrap();
        assert_eq!(std::fs::read(dir.join("x")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}"); // x and results/
        assert!(s.load_result("abc", "fp").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
