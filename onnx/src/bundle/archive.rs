//! The bundle container: one uncompressed tar of regular files, indexed by
//! its headers (data skipped by seeking), read entry by entry, and written
//! atomically.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

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

/// One file of a bundle tar: where its data starts and how long it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryIndex {
    pub name: String,
    /// Byte offset of the data in the archive.
    pub offset: u64,
    pub size: u64,
}

/// List the files of a tar of `len` bytes without reading their data (the
/// headers are read, the data is skipped by seeking). Directories are
/// skipped; any other entry type, an unsafe or duplicate name, an entry that
/// runs past the end or a missing end-of-archive marker is an error.
pub fn index_entries<R: Read + Seek>(
    mut reader: R,
    len: u64,
) -> Result<Vec<EntryIndex>, ArchiveError> {
    if len == 0 {
        return Err(ArchiveError::Truncated("the file is empty".into()));
    }
    if len < 2 * BLOCK as u64 {
        return Err(ArchiveError::Truncated(format!(
            "only {len} bytes, shorter than an empty tar"
        )));
    }
    reader.seek(SeekFrom::Start(0)).map_err(|e| classify(&e))?;
    let mut index: Vec<EntryIndex> = Vec::new();
    let mut end_of_data = 0u64;
    {
        let mut archive = tar::Archive::new(&mut reader);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| ArchiveError::Malformed(one_line(&e)))?;
        for entry in entries {
            let entry = entry.map_err(|e| classify(&e))?;
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
            check_file_name(&name)
                .map_err(|e| ArchiveError::Malformed(format!("entry name {e}")))?;
            let size = entry.size();
            let offset = entry.raw_file_position();
            let end = offset.saturating_add(size);
            if end > len {
                return Err(ArchiveError::Truncated(format!(
                    "entry `{name}` should have {size} bytes but the archive ends after {}",
                    len.saturating_sub(offset)
                )));
            }
            end_of_data = end_of_data.max(end);
            if index.iter().any(|e| e.name == name) {
                return Err(ArchiveError::Malformed(format!(
                    "entry `{name}` appears twice"
                )));
            }
            index.push(EntryIndex { name, offset, size });
        }
    }
    // A complete tar ends with two zero blocks after the padded last entry;
    // a copy cut at a block boundary would otherwise look like a smaller
    // valid archive.
    let padded_end = end_of_data.div_ceil(BLOCK as u64) * BLOCK as u64;
    let mut tail = [0u8; 2 * BLOCK];
    let complete = padded_end + 2 * BLOCK as u64 <= len
        && reader.seek(SeekFrom::Start(padded_end)).is_ok()
        && reader.read_exact(&mut tail).is_ok()
        && tail.iter().all(|&b| b == 0);
    if !complete {
        return Err(ArchiveError::Truncated(
            "it does not end with the end-of-archive marker (two zero blocks)".into(),
        ));
    }
    if index.is_empty() {
        return Err(ArchiveError::Malformed("the archive holds no files".into()));
    }
    Ok(index)
}

/// Read the data of one indexed entry, feeding it to `hasher` as it is read
/// (one copy in memory, hashed streaming).
pub fn read_entry<R: Read + Seek>(
    reader: &mut R,
    entry: &EntryIndex,
    hasher: &mut impl sha2::Digest,
) -> Result<Vec<u8>, ArchiveError> {
    reader
        .seek(SeekFrom::Start(entry.offset))
        .map_err(|e| classify(&e))?;
    let size = usize::try_from(entry.size)
        .map_err(|_| ArchiveError::Malformed(format!("entry `{}` is too large", entry.name)))?;
    let mut data = Vec::with_capacity(size);
    let mut buf = vec![0u8; CHUNK.min(size.max(1))];
    let mut left = size;
    while left > 0 {
        let n = buf.len().min(left);
        reader.read_exact(&mut buf[..n]).map_err(|e| classify(&e))?;
        hasher.update(&buf[..n]);
        data.extend_from_slice(&buf[..n]);
        left -= n;
    }
    Ok(data)
}

/// Bytes read at a time when hashing or reading an entry.
pub const CHUNK: usize = 64 * 1024;

/// Read every file of a tar held in memory (see [`index_entries`]).
pub fn read_entries(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    let index = index_entries(std::io::Cursor::new(bytes), bytes.len() as u64)?;
    Ok(index
        .into_iter()
        .map(|e| {
            let start = e.offset as usize;
            let data = bytes[start..start + e.size as usize].to_vec();
            (e.name, data)
        })
        .collect())
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
