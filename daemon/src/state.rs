//! Persistent state in `state_dir`, written so that it survives `kill -9` and
//! power loss: every file is written to a temporary name, fsynced, renamed
//! over the old one, and the directory fsynced.
//!
//! ```text
//! state_dir/active.bundle          the active bundle, byte for byte
//! state_dir/active.json            where it came from and when (informational)
//! state_dir/previous.bundle        the bundle installed before it (the
//! state_dir/previous.json          fallback slot) and its record
//! state_dir/floor.json             the highest version ever installed
//! state_dir/intake/                bundles claimed from the drop folder
//!                                  while they are checked (see `intake`)
//! state_dir/search/<sha>-<fp>.json the search result of a bundle on this
//!                                  device (written by adaptivenet-search)
//! ```
//! The bundle file itself is the truth: on start it is opened and verified
//! again, and its sha256 finds its search result. The version floor lives in
//! its own small file so that losing or damaging a bundle file never opens
//! the way to a downgrade.

use std::path::{Path, PathBuf};

use adaptivenet_onnx::fsutil::{copy_atomically, remove_stale_temps, write_atomically};
use serde::{Deserialize, Serialize};

pub use crate::status::Slot;

pub const ACTIVE_BUNDLE: &str = "active.bundle";
pub const ACTIVE_INFO: &str = "active.json";
pub const PREVIOUS_BUNDLE: &str = "previous.bundle";
pub const PREVIOUS_INFO: &str = "previous.json";
pub const FLOOR: &str = "floor.json";

/// The version floor: no bundle older than this is accepted (unless
/// `pin_version` names it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    pub version: u64,
    pub sha256: String,
}

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

    pub fn previous_bundle_path(&self) -> PathBuf {
        self.dir.join(PREVIOUS_BUNDLE)
    }

    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        match slot {
            Slot::Active => self.active_bundle_path(),
            Slot::Previous => self.previous_bundle_path(),
        }
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let json = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomically(&path, &json)?;
        Ok(())
    }

    /// Make `bytes` (a verified bundle) the active bundle.
    pub fn save_active(&self, bytes: &[u8], info: &ActiveInfo) -> Result<(), StateError> {
        write_atomically(&self.active_bundle_path(), bytes)?;
        self.write_json(ACTIVE_INFO, info)?;
        self.raise_floor(info.version, &info.sha256)
    }

    /// Install the verified bundle file `src` as the active bundle: the
    /// active one (if any) becomes the previous slot first, then `src` is
    /// copied in, then its record and the version floor are written. Each
    /// step is atomic; after `kill -9` between two of them a slot holds
    /// either its old or its new bundle, never a partial one.
    /// With `rotate` false the previous slot is kept as it is (the active
    /// file is not worth keeping: it failed its checks at start).
    pub fn install(&self, src: &Path, info: &ActiveInfo, rotate: bool) -> Result<(), StateError> {
        let active = self.active_bundle_path();
        if rotate && active.is_file() {
            copy_atomically(&active, &self.previous_bundle_path())?;
            if let Some(old) = self.active_info() {
                self.write_json(PREVIOUS_INFO, &old)?;
            }
        }
        copy_atomically(src, &active)?;
        self.write_json(ACTIVE_INFO, info)?;
        self.raise_floor(info.version, &info.sha256)
    }

    /// Rewrite the active bundle's record (when it lags behind the file).
    pub fn write_active_info(&self, info: &ActiveInfo) -> Result<(), StateError> {
        self.write_json(ACTIVE_INFO, info)
    }

    /// The highest version ever installed, if recorded.
    pub fn floor(&self) -> Option<Floor> {
        let text = std::fs::read(self.dir.join(FLOOR)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Record `version` as the floor if it is above the current one.
    pub fn raise_floor(&self, version: u64, sha256: &str) -> Result<(), StateError> {
        if self.floor().is_some_and(|f| f.version >= version) {
            return Ok(());
        }
        self.write_json(
            FLOOR,
            &Floor {
                version,
                sha256: sha256.to_string(),
            },
        )
    }

    /// Information about the active bundle, if recorded.
    pub fn active_info(&self) -> Option<ActiveInfo> {
        let text = std::fs::read(self.dir.join(ACTIVE_INFO)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Information about the previous bundle, if recorded.
    pub fn previous_info(&self) -> Option<ActiveInfo> {
        let text = std::fs::read(self.dir.join(PREVIOUS_INFO)).ok()?;
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
        assert_eq!(s.active_info(), Some(info.clone()));
        assert_eq!(s.floor().map(|f| f.version), Some(3));
        // Installing from a file keeps the old one as the previous slot.
        let src = dir.join("new.bundle");
        std::fs::write(&src, b"newer").unwrap();
        let newer = ActiveInfo {
            version: 5,
            sha256: "cd".into(),
            ..info.clone()
        };
        s.install(&src, &newer, true).unwrap();
        assert_eq!(std::fs::read(s.active_bundle_path()).unwrap(), b"newer");
        assert_eq!(std::fs::read(s.previous_bundle_path()).unwrap(), b"bytes");
        assert_eq!(s.previous_info(), Some(info));
        assert_eq!(s.floor().map(|f| f.version), Some(5));
        // The floor never goes down.
        s.raise_floor(2, "ef").unwrap();
        assert_eq!(s.floor().map(|f| f.version), Some(5));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
