//! Persistent state in `state_dir`, written so that it survives `kill -9` and
//! power loss: every file is written to a temporary name, fsynced, renamed
//! over the old one, and the directory fsynced.
//!
//! ```text
//! state_dir/active.bundle          the active bundle, byte for byte
//! state_dir/active.json            where it came from and when (informational)
//! state_dir/search/<sha>-<fp>.json the search result of a bundle on this
//!                                  device (written by adaptivenet-search)
//! ```
//! The bundle file itself is the truth: on start it is opened and verified
//! again, and its sha256 finds its search result.

use std::path::{Path, PathBuf};

use adaptivenet_onnx::fsutil::{remove_stale_temps, write_atomically};
use serde::{Deserialize, Serialize};

pub const ACTIVE_BUNDLE: &str = "active.bundle";
pub const ACTIVE_INFO: &str = "active.json";

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

/// A state file that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] adaptivenet_onnx::Error),
    #[error("{}: cannot serialise: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
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
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        remove_stale_temps(dir);
        // Search results lived in `results/` before they moved to the
        // search's own cache (`search/`); the old copies are never read.
        let legacy = dir.join("results");
        if legacy.is_dir() && std::fs::remove_dir_all(&legacy).is_ok() {
            log::info!(
                "{}: removed the old search results folder",
                legacy.display()
            );
        }
        Ok(State {
            dir: dir.to_path_buf(),
        })
    }

    pub fn active_bundle_path(&self) -> PathBuf {
        self.dir.join(ACTIVE_BUNDLE)
    }

    /// Make `bytes` (a verified bundle) the active bundle.
    pub fn save_active(&self, bytes: &[u8], info: &ActiveInfo) -> Result<(), StateError> {
        write_atomically(&self.active_bundle_path(), bytes)?;
        let path = self.dir.join(ACTIVE_INFO);
        let json = serde_json::to_vec_pretty(info).map_err(|source| StateError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomically(&path, &json)?;
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_bundle_round_trip_and_stale_temps_removed() {
        let dir = std::env::temp_dir().join(format!("adaptived-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".active.bundle.tmp-1-0"), b"half").unwrap();
        let s = State::open(&dir).unwrap();
        assert!(!dir.join(".active.bundle.tmp-1-0").exists());
        assert!(!s.has_active());
        let info = ActiveInfo {
            sha256: "ab".into(),
            name: "m".into(),
            version: 3,
            source: "m.bundle".into(),
            installed_at: 1,
        };
        s.save_active(b"bytes", &info).unwrap();
        assert!(s.has_active());
        assert_eq!(std::fs::read(s.active_bundle_path()).unwrap(), b"bytes");
        assert_eq!(s.active_info(), Some(info));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
