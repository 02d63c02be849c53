//! Claiming bundles from the drop folder: a complete file is first renamed
//! (atomically) out of the drop folder into `state_dir/intake/` under a
//! unique name, and only that claimed copy is verified and installed, so a
//! file dropped later under the same name is never touched by the check. A
//! small marker (`NAME.checking`, written atomically) records the attempt
//! before the risky steps; a claimed bundle whose marker survives a crash is
//! rejected at the next start, never retried blindly. When the drop folder
//! is on another file system than `state_dir`, the claim goes to the drop
//! folder's hidden `.intake/` instead (a rename cannot cross file systems).

use std::path::{Path, PathBuf};

use adaptivenet_onnx::fsutil::{sync_dir, write_atomically};
use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, unix_now};

/// The claim folder under `state_dir`.
pub const INTAKE_DIR: &str = "intake";
/// The fallback claim folder under the drop folder (hidden: never watched).
pub const FALLBACK_DIR: &str = ".intake";
/// The marker's suffix.
pub const MARKER: &str = ".checking";
/// The reason given to a claimed bundle found with its marker at start.
pub const STOPPED_WHILE_CHECKING: &str = "the daemon stopped while checking this bundle";

/// A bundle taken out of the drop folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The claimed file.
    pub path: PathBuf,
    /// Its marker (present once [`Claim::mark`] returned).
    pub marker: PathBuf,
    /// The name it was dropped as.
    pub name: String,
}

/// What a marker records.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    name: String,
    claimed_at: String,
}

/// Why a claim could not be made or recorded.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] adaptivenet_onnx::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IntakeError + '_ {
    move |source| IntakeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The claim folders: `state_dir/intake/` and the drop folder's fallback.
pub fn claim_dirs(state_dir: &Path, bundle_dir: &Path) -> [PathBuf; 2] {
    [state_dir.join(INTAKE_DIR), bundle_dir.join(FALLBACK_DIR)]
}

fn unique_name(dir: &Path, name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut k = 0u32;
    loop {
        let p = dir.join(format!("{nanos}-{k}-{name}"));
        if !p.exists() {
            return p;
        }
        k += 1;
    }
}

/// Take `src` out of the drop folder by a rename. `Ok(None)`: it is gone.
pub fn claim(
    state_dir: &Path,
    bundle_dir: &Path,
    src: &Path,
) -> Result<Option<Claim>, IntakeError> {
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let [primary, fallback] = claim_dirs(state_dir, bundle_dir);
    for dir in [primary, fallback] {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let dest = unique_name(&dir, &name);
        match std::fs::rename(src, &dest) {
            Ok(()) => {
                sync_dir(&dir)?;
                let marker = PathBuf::from(format!("{}{MARKER}", dest.display()));
                return Ok(Some(Claim {
                    path: dest,
                    marker,
                    name,
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // EXDEV: another file system; try the drop folder's own.
            Err(e) if e.raw_os_error() == Some(18) => continue,
            Err(e) => return Err(io(src)(e)),
        }
    }
    Err(io(src)(std::io::Error::other(
        "cannot rename it out of the drop folder",
    )))
}

impl Claim {
    /// Record that the checks are starting.
    pub fn mark(&self) -> Result<(), IntakeError> {
        let m = Marker {
            name: self.name.clone(),
            claimed_at: rfc3339(unix_now()),
        };
        let json =
            serde_json::to_vec(&m).map_err(|e| io(&self.marker)(std::io::Error::other(e)))?;
        write_atomically(&self.marker, &json)?;
        Ok(())
    }

    /// The attempt is over: remove the claimed file (if still here) and
    /// then the marker.
    pub fn finish(&self) {
        for p in [&self.path, &self.marker] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("{}: cannot remove it: {e}", p.display()),
            }
        }
        if let Some(dir) = self.path.parent() {
            let _ = sync_dir(dir);
        }
    }
}

/// A claim found at start.
#[derive(Debug)]
pub struct Leftover {
    pub claim: Claim,
    /// Its checks had started (the marker is there).
    pub marked: bool,
    /// The claimed file is still there.
    pub present: bool,
}

/// Claims left by an earlier run (in both claim folders), oldest first.
pub fn leftovers(state_dir: &Path, bundle_dir: &Path) -> Vec<Leftover> {
    let mut out = Vec::new();
    for dir in claim_dirs(state_dir, bundle_dir) {
        adaptivenet_onnx::fsutil::remove_stale_temps(&dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let base = n.strip_suffix(MARKER).unwrap_or(&n).to_string();
            if !seen.insert(base.clone()) {
                continue;
            }
            let path = dir.join(&base);
            let marker = PathBuf::from(format!("{}{MARKER}", path.display()));
            let marked = marker.is_file();
            let name = std::fs::read(&marker)
                .ok()
                .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
                .map(|m| m.name)
                .unwrap_or_else(|| original_name(&base));
            out.push(Leftover {
                present: path.is_file(),
                marked,
                claim: Claim { path, marker, name },
            });
        }
    }
    out
}

/// The dropped name inside a claim name `NANOS-K-NAME`.
fn original_name(claimed: &str) -> String {
    claimed.splitn(3, '-').nth(2).unwrap_or(claimed).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_mark_and_leftovers() {
        let root = std::env::temp_dir().join(format!("adaptived-intake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (state, drop) = (root.join("state"), root.join("drop"));
        std::fs::create_dir_all(&drop).unwrap();
        let src = drop.join("m.bundle");
        std::fs::write(&src, b"one").unwrap();
        let c = claim(&state, &drop, &src).unwrap().unwrap();
        assert!(!src.exists(), "claimed by a rename");
        assert_eq!(std::fs::read(&c.path).unwrap(), b"one");
        assert_eq!(c.name, "m.bundle");
        // A newer file under the same name is a different file.
        std::fs::write(&src, b"two").unwrap();
        let c2 = claim(&state, &drop, &src).unwrap().unwrap();
        assert_ne!(c.path, c2.path);
        assert!(claim(&state, &drop, &src).unwrap().is_none(), "gone");
        c.mark().unwrap();
        let mut l = leftovers(&state, &drop);
        l.sort_by_key(|l| l.marked);
        assert_eq!(l.len(), 2);
        assert!(!l[0].marked && l[0].present);
        assert!(l[1].marked && l[1].present);
        assert_eq!(l[1].claim, c);
        c.finish();
        c2.finish();
        assert!(leftovers(&state, &drop).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
