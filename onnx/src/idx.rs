//! Reader for IDX files (the MNIST family: Fashion-MNIST, MNIST, ...), plain
//! or gzip-compressed, with the errors naming the file.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// An IDX array of unsigned bytes (the type used by MNIST-family images and labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

impl IdxArray {
    /// Number of items (the first dimension).
    pub fn len(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements per item.
    pub fn item_size(&self) -> usize {
        self.dims.iter().skip(1).product()
    }
    /// The bytes of item `i`.
    pub fn item(&self, i: usize) -> &[u8] {
        let s = self.item_size();
        &self.data[i * s..(i + 1) * s]
    }
}

/// Read an IDX file of unsigned bytes (`.gz` is detected by its magic bytes).
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(&raw, &path.display().to_string())
}

/// Parse IDX bytes (plain or gzip); `origin` names the source in errors.
pub fn parse_idx(raw: &[u8], origin: &str) -> Result<IdxArray> {
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw)
            .read_to_end(&mut out)
            .map_err(|e| Error::bad_data(origin, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw.to_vec()
    };
    if bytes.len() < 4 {
        return Err(Error::bad_data(origin, "too short for an IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::bad_data(
            origin,
            "not an IDX file (bad magic number)",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(Error::bad_data(
            origin,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || bytes.len() < 4 + 4 * ndim {
        return Err(Error::bad_data(origin, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| {
            u32::from_be_bytes([
                bytes[4 + 4 * k],
                bytes[5 + 4 * k],
                bytes[6 + 4 * k],
                bytes[7 + 4 * k],
            ]) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let data = &bytes[4 + 4 * ndim..];
    if data.len() != expected {
        return Err(Error::bad_data(
            origin,
            format!(
                "IDX header says {dims:?} ({expected} bytes) but the file holds {} bytes",
                data.len()
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_committed_subset() {
        let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data");
        let img = read_idx(d.join("fmnist-test-1k-images-idx3-ubyte.gz")).unwrap();
        let lab = read_idx(d.join("fmnist-test-1k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!(img.dims, vec![1000, 28, 28]);
        assert_eq!(lab.dims, vec![1000]);
        assert!(lab.data.iter().all(|&l| l < 10));
        // Fashion-MNIST test item 0 is an ankle boot (class 9), item 1 a pullover (2)
        assert_eq!(&lab.data[..2], &[9, 2]);
    }

    #[test]
    fn rejects_bad_headers_and_sizes() {
        let mut ok = vec![0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9];
        assert_eq!(parse_idx(&ok, "t").unwrap().data, vec![7, 8, 9]);
        ok.pop();
        assert!(parse_idx(&ok, "t")
            .unwrap_err()
            .to_string()
            .contains("holds 2 bytes"));
        assert!(parse_idx(&[1, 2, 8, 1], "t").is_err());
        assert!(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 0], "t")
            .unwrap_err()
            .to_string()
            .contains("unsigned byte"));
        assert!(parse_idx(&[0x1f, 0x8b, 1, 2, 3], "t.gz")
            .unwrap_err()
            .to_string()
            .contains("gzip"));
    }
}
