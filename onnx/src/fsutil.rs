//! Durable file writes: the one `write_atomically` every crate uses for
//! state, caches, models and bundles. A reader never sees a half-written
//! file, a failure leaves nothing beside the target, and after a return the
//! new content survives `kill -9` and power loss (file and folder fsynced).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The prefix of the temporary files [`write_atomically`] creates (a stale
/// one from an interrupted write can be removed with [`remove_stale_temps`]).
pub const TEMP_MARK: &str = ".tmp-";

/// Write `bytes` to `path` atomically and durably: a temporary file in the
/// same folder (`.NAME.tmp-PID-N`), fsync, rename over `path`, fsync the
/// folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?
        .to_string_lossy()
        .into_owned();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}{TEMP_MARK}{}-{n}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copy the file `src` to `dst` atomically and durably (as
/// [`write_atomically`], streaming: the file is never held in memory).
pub fn copy_atomically(src: &Path, dst: &Path) -> Result<()> {
    let dir = parent_dir(dst);
    let name = dst
        .file_name()
        .ok_or_else(|| Error::io(dst, std::io::Error::other("not a file path")))?
        .to_string_lossy()
        .into_owned();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}{TEMP_MARK}c{}-{n}", std::process::id()));
    let result = (|| {
        let mut from = std::fs::File::open(src).map_err(|e| Error::io(src, e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        std::io::copy(&mut from, &mut file).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, dst).map_err(|e| Error::io(dst, e))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsync a folder so that a rename in it is durable. File systems that
/// cannot sync a folder (some FUSE and network mounts) are not an error.
pub fn sync_dir(dir: &Path) -> Result<()> {
    match std::fs::File::open(dir) {
        Ok(d) => match d.sync_all() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(22) => Ok(()), // EINVAL: unsupported
            Err(e) => Err(Error::io(dir, e)),
        },
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Remove temporary files left in `dir` by writes that were interrupted.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.contains(TEMP_MARK) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("onnx-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_atomically(&dir.join("x"), b"one").unwrap();
        write_atomically(&dir.join("x"), b"two").unwrap();
        assert_eq!(std::fs::read(dir.join("x")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        // a folder that does not exist: an error naming the temp file, nothing left
        let err = write_atomically(&dir.join("no/such/x"), b"z").unwrap_err();
        assert!(err.to_string().contains("no/such"), "{err}");
        std::fs::write(dir.join(".y.tmp-1-0"), b"stale").unwrap();
        remove_stale_temps(&dir);
        assert!(!dir.join(".y.tmp-1-0").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
