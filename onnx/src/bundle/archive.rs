//! The bundle container: one uncompressed tar of regular files, read fully
//! into memory and written atomically.

use std::collections::BTreeMap;
use std::io::Read;

use super::manifest::check_file_name;

/// Problems with the tar container itself (the caller adds the bundle path).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is truncated or still being copied: {0}")]
    Truncated(String),
    #[error("not a bundle tar archive: {0}")]
    Malformed(String),
}

const BLOCK: usize = 512;

/// Read every file of a tar held in memory. Directories are skipped; any
/// other entry type, an unsafe or duplicate name, or a truncated archive is
/// an error.
pub fn read_entries(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    if bytes.is_empty() {
        return Err(ArchiveError::Truncated("the file is empty".into()));
    }
    if bytes.len() < 2 * BLOCK {
        return Err(ArchiveError::Truncated(format!(
            "only {} bytes, shorter than an empty tar",
            bytes.len()
        )));
    }
    let mut archive = tar::Archive::new(bytes);
    let mut files = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Malformed(one_line(&e)))?;
    let mut end_of_data = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| classify(&e))?;
        let name = entry
            .path()
            .map_err(|e| {
                ArchiveError::Malformed(format!("an entry name is not valid: {}", one_line(&e)))
            })?
            .to_string_lossy()
            .into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(ArchiveError::Malformed(format!(
                "entry `{name}` is not a regular file ({kind:?}); a bundle holds only files"
            )));
        }
        check_file_name(&name).map_err(|e| ArchiveError::Malformed(format!("entry name {e}")))?;
        let size = entry.size();
        let start = entry.raw_file_position() as usize;
        let mut data = Vec::with_capacity(size.min(bytes.len() as u64) as usize);
        entry.read_to_end(&mut data).map_err(|e| classify(&e))?;
        if (data.len() as u64) != size {
            return Err(ArchiveError::Truncated(format!(
                "entry `{name}` should have {size} bytes but the archive ends after {}",
                data.len()
            )));
        }
        end_of_data = end_of_data.max(start + data.len());
        if files.insert(name.clone(), data).is_some() {
            return Err(ArchiveError::Malformed(format!(
                "entry `{name}` appears twice"
            )));
        }
    }
    // A complete tar ends with two zero blocks after the padded last entry;
    // a copy cut at a block boundary would otherwise look like a smaller
    // valid archive.
    let padded_end = end_of_data.div_ceil(BLOCK) * BLOCK;
    let tail = bytes.get(padded_end..).unwrap_or(&[]);
    if tail.len() < 2 * BLOCK || tail[..2 * BLOCK].iter().any(|&b| b != 0) {
        return Err(ArchiveError::Truncated(
            "it does not end with the end-of-archive marker (two zero blocks)".into(),
        ));
    }
    if files.is_empty() {
        return Err(ArchiveError::Malformed("the archive holds no files".into()));
    }
    Ok(files)
}

fn classify(e: &std::io::Error) -> ArchiveError {
    let msg = one_line(e);
    if e.kind() == std::io::ErrorKind::UnexpectedEof || msg.contains("entire block") {
        ArchiveError::Truncated(msg)
    } else {
        ArchiveError::Malformed(msg)
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// Serialise files into an uncompressed tar, in the given order, with fixed
/// metadata (mode 0644, mtime 0, uid/gid 0) so equal inputs give equal bytes.
pub fn tar_bytes<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, name, data)?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let files = [
            ("a.txt", &b"hello"[..]),
            ("calibration/x.bin", &[7u8; 1000][..]),
        ];
        let bytes = tar_bytes(files).unwrap();
        let back = read_entries(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back["a.txt"], b"hello");
        assert_eq!(back["calibration/x.bin"].len(), 1000);
        assert_eq!(
            tar_bytes(files).unwrap(),
            bytes,
            "tar output must be deterministic"
        );
        // Every truncation is an error, wherever it cuts.
        for cut in [
            0,
            100,
            512,
            1024,
            1500,
            2048,
            bytes.len() - 1024,
            bytes.len() - 1,
        ] {
            let err = read_entries(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, ArchiveError::Truncated(_)),
                "cut at {cut}: {err}"
            );
        }
        // Garbage is an error, not a panic.
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        assert!(read_entries(&garbage).is_err());
    }
}
