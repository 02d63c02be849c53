//! Minimal NPY (NumPy `.npy`) reader and writer: little-endian float32,
//! int64, int32 and uint8 arrays in C order, which is what the tools
//! exchange with Python (reference outputs, tensors with labels).

use std::path::Path;

use crate::error::{Error, Result};

/// Element data of an NPY array.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

/// An NPY array.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// The data as f32 (integers are converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F32(v) => v.clone(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    /// The data as i64 labels (floats are rejected).
    pub fn to_i64(&self, origin: &str) -> Result<Vec<i64>> {
        match &self.data {
            NpyData::I64(v) => Ok(v.clone()),
            NpyData::I32(v) => Ok(v.iter().map(|&x| x as i64).collect()),
            NpyData::U8(v) => Ok(v.iter().map(|&x| x as i64).collect()),
            NpyData::F32(_) => Err(Error::bad_data(
                origin,
                "expected integer labels, found float32",
            )),
        }
    }
}

/// Read a `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&raw, &path.display().to_string())
}

/// Parse `.npy` bytes; `origin` names the source in errors.
pub fn parse_npy(raw: &[u8], origin: &str) -> Result<NpyArray> {
    let bad = |p: &str| Error::bad_data(origin, p.to_string());
    if raw.len() < 10 || &raw[..6] != b"\x93NUMPY" {
        return Err(bad("not an NPY file (bad magic)"));
    }
    let (hlen, hstart) = match raw[6] {
        1 => (u16::from_le_bytes([raw[8], raw[9]]) as usize, 10),
        2 | 3 => {
            if raw.len() < 12 {
                return Err(bad("truncated NPY header"));
            }
            (
                u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize,
                12,
            )
        }
        v => {
            return Err(Error::bad_data(
                origin,
                format!("unsupported NPY version {v}"),
            ))
        }
    };
    let header = raw
        .get(hstart..hstart + hlen)
        .ok_or_else(|| bad("truncated NPY header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("NPY header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        let colon = rest.find(':')?;
        Some(rest[colon + 1..].trim_start())
    };
    let descr = field("descr").ok_or_else(|| bad("NPY header has no descr"))?;
    let descr = descr.trim_start_matches('\'');
    let descr = &descr[..descr
        .find('\'')
        .ok_or_else(|| bad("bad descr in NPY header"))?];
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad(
            "Fortran-order NPY arrays are not supported; save with C order",
        ));
    }
    let shape_txt = field("shape").ok_or_else(|| bad("NPY header has no shape"))?;
    let close = shape_txt
        .find(')')
        .ok_or_else(|| bad("bad shape in NPY header"))?;
    let shape: Vec<usize> = shape_txt[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad("bad shape in NPY header"))
        })
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let body = &raw[hstart + hlen..];
    let need = |size: usize| -> Result<&[u8]> {
        body.get(..n * size).ok_or_else(|| {
            Error::bad_data(
                origin,
                format!(
                    "NPY data truncated: shape {shape:?} needs {} bytes, found {}",
                    n * size,
                    body.len()
                ),
            )
        })
    };
    let data = match descr {
        "<f4" => NpyData::F32(
            need(4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "<i8" => NpyData::I64(
            need(8)?
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        "<i4" => NpyData::I32(
            need(4)?
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "|u1" | "<u1" => NpyData::U8(need(1)?.to_vec()),
        other => {
            return Err(Error::bad_data(
                origin,
                format!(
                    "NPY dtype `{other}` is not supported (use float32, int64, int32 or uint8)"
                ),
            ))
        }
    };
    Ok(NpyArray { shape, data })
}

/// Encode a float32 array as `.npy` (version 1.0).
pub fn encode_npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let shape_txt = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_numpy_files() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = encode_npy_f32(&[2, 3, 4], &data);
        assert_eq!(bytes.len() % 16, 0);
        let a = parse_npy(&bytes, "x").unwrap();
        assert_eq!(a.shape, vec![2, 3, 4]);
        assert_eq!(a.data, NpyData::F32(data));
        // written by numpy.save
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/oracle/ref_logits_ort.npy");
        let r = read_npy(p).unwrap();
        assert_eq!(r.shape, vec![64, 10]);
    }

    #[test]
    fn rejects_truncated_and_unsupported() {
        let bytes = encode_npy_f32(&[4], &[1.0, 2.0, 3.0, 4.0]);
        assert!(parse_npy(&bytes[..bytes.len() - 1], "x")
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(parse_npy(b"PK\x03\x04 not npy", "x").is_err());
        let f64_header = String::from_utf8_lossy(&bytes).replace("<f4", "<f8");
        assert!(parse_npy(f64_header.as_bytes(), "x").is_err());
    }
}
