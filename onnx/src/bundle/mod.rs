//! Supernet bundles: one uncompressed tar with `manifest.yaml`,
//! `supernet.onnx`, `manifest.sig` (a minisign signature of the manifest) and
//! an optional `calibration/` folder. See DESIGN.md, "Bundle format".
//!
//! [`Bundle::open`] reads a bundle fully and trusts nothing: it checks the
//! container, the signature against trusted keys, the manifest schema, the
//! checksum of every file, that no unlisted file is present, and that the
//! supernet is a valid ONNX model that has the tensors the manifest names.
//! [`BundleWriter`] writes one atomically; signing itself is done by the
//! caller (the cloud tools), so devices link only signature verification.

pub mod archive;
pub mod from_oracle;
pub mod manifest;
pub mod signature;

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tract_onnx::pb::ModelProto;

pub use archive::ArchiveError;
pub use from_oracle::{oracle_manifest, ModelDescription};
pub use manifest::{
    batch_shape, shape_string, Branch, BranchId, BranchKind, CreatedBy, Cut, Dim, IdError,
    InputSpec, Manifest, ManifestError, ModelInfo, OutputSpec, Preprocess, SubnetId,
    CALIBRATION_DIR, FORMAT_VERSION, MANIFEST_FILE, SIGNATURE_FILE, SUPERNET_FILE,
};
pub use signature::{read_public_key, KeyError, PublicKey, SignatureError};

/// What is wrong with a bundle (the [`BundleError`] adds the path).
#[derive(Debug, thiserror::Error)]
pub enum BundleProblem {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Archive(ArchiveError),
    #[error("`{0}` is missing from the bundle")]
    MissingFile(String),
    #[error("`{0}` is in the bundle but not listed in the manifest's `files`")]
    UnlistedFile(String),
    #[error("checksum mismatch for `{file}`: the manifest lists sha256 {expected}, the file has {actual}")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("manifest.yaml is not UTF-8 text")]
    ManifestNotText,
    #[error("manifest.yaml: {0}")]
    Manifest(ManifestError),
    #[error("the bundle is unsigned (no manifest.sig) and unsigned bundles are not allowed")]
    Unsigned,
    #[error("{0}")]
    Signature(SignatureError),
    #[error("{0}")]
    Model(String),
    #[error("supernet.onnx does not match manifest.yaml: {0}")]
    ModelMismatch(String),
    #[error("cannot add `{name}`: {problem}")]
    BadFile { name: String, problem: String },
    #[error("the file has {size} bytes, more than the {max} allowed (config key `max_bundle_mb`)")]
    TooLarge { size: u64, max: u64 },
    #[error("`{name}` has {size} bytes, more than the {max} allowed for it")]
    EntryTooLarge { name: String, size: u64, max: u64 },
}

// Problems carry their cause in their message (no `source` chain), so a
// caller printing the chain on one line does not repeat it.
impl From<ArchiveError> for BundleProblem {
    fn from(e: ArchiveError) -> Self {
        BundleProblem::Archive(e)
    }
}
impl From<ManifestError> for BundleProblem {
    fn from(e: ManifestError) -> Self {
        BundleProblem::Manifest(e)
    }
}
impl From<SignatureError> for BundleProblem {
    fn from(e: SignatureError) -> Self {
        BundleProblem::Signature(e)
    }
}

/// A bundle that cannot be opened or written, with the bundle's path. The
/// message is one line: `PATH: PROBLEM`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct BundleError {
    pub path: PathBuf,
    pub problem: BundleProblem,
}

impl BundleError {
    pub fn new(path: impl Into<PathBuf>, problem: impl Into<BundleProblem>) -> Self {
        BundleError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

impl From<BundleError> for crate::Error {
    fn from(e: BundleError) -> Self {
        crate::Error::BadData {
            origin: e.path.display().to_string(),
            problem: e.problem.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, BundleError>;

/// Why a [`Signer`] could not sign (the signer's own error, kept whole).
pub type SignError = Box<dyn std::error::Error + Send + Sync>;

/// Signs `manifest.yaml` bytes, returning the text of `manifest.sig` (a
/// minisign signature) or why it could not.
pub type Signer<'a> = &'a dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, SignError>;

/// How the signature of an opened bundle was treated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Verified by `trusted_keys[key_index]`.
    Verified {
        key_index: usize,
        trusted_comment: String,
    },
    /// No signature, and unsigned bundles were allowed.
    Unsigned,
    /// A signature is present but no trusted key was given (unsigned bundles
    /// allowed, e.g. for `inspect`); it was only checked to be well-formed.
    NotChecked,
}

/// An opened, checked bundle, held in memory.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// `manifest.yaml` exactly as stored (what the signature covers).
    pub manifest_bytes: Vec<u8>,
    /// `manifest.sig` as stored, if any.
    pub signature: Option<Vec<u8>>,
    pub signature_status: SignatureStatus,
    /// Every file other than the manifest and its signature, by name.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The decoded `supernet.onnx`.
    pub model: ModelProto,
    /// sha256 (lowercase hex) of the whole bundle file.
    pub sha256: String,
}

/// sha256 of bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// sha256 (lowercase hex) of everything `reader` holds, read in chunks from
/// the start (never held whole).
pub fn sha256_of_reader<R: Read + Seek>(reader: &mut R) -> std::io::Result<String> {
    reader.seek(std::io::SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; archive::CHUNK];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// sha256 (lowercase hex) of a file, read in chunks.
pub fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    sha256_of_reader(&mut f)
}

/// Largest `manifest.yaml` or `manifest.sig` read (1 MiB): both are small
/// text files, read before the signature is checked.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

impl Bundle {
    /// Read and check the bundle at `path`. A signature is required unless
    /// `allow_unsigned`; when one is present and `trusted_keys` is not empty
    /// it must verify with one of them.
    pub fn open(
        path: impl AsRef<Path>,
        trusted_keys: &[PublicKey],
        allow_unsigned: bool,
    ) -> Result<Bundle> {
        Bundle::open_limited(path, trusted_keys, allow_unsigned, None)
    }

    /// [`Bundle::open`] with a size cap: a file larger than `max_bytes` is
    /// refused from its size, before anything is read. The file is read
    /// entry by entry (never whole): the tar headers, then `manifest.yaml`
    /// and `manifest.sig`, which are verified before any other file is read;
    /// the other files are hashed as they are read.
    pub fn open_limited(
        path: impl AsRef<Path>,
        trusted_keys: &[PublicKey],
        allow_unsigned: bool,
        max_bytes: Option<u64>,
    ) -> Result<Bundle> {
        let path = path.as_ref();
        let err = |p: BundleProblem| BundleError::new(path, p);
        let file = std::fs::File::open(path).map_err(|e| err(BundleProblem::Io(e)))?;
        let len = file
            .metadata()
            .map_err(|e| err(BundleProblem::Io(e)))?
            .len();
        if let Some(max) = max_bytes.filter(|m| len > *m) {
            return Err(err(BundleProblem::TooLarge { size: len, max }));
        }
        let reader = std::io::BufReader::new(file);
        Bundle::from_reader(path, reader, len, trusted_keys, allow_unsigned)
    }

    /// As [`Bundle::open`], for bytes already read; `path` names them in errors.
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        trusted_keys: &[PublicKey],
        allow_unsigned: bool,
    ) -> Result<Bundle> {
        let reader = std::io::Cursor::new(bytes);
        Bundle::from_reader(
            path,
            reader,
            bytes.len() as u64,
            trusted_keys,
            allow_unsigned,
        )
    }

    fn from_reader<R: Read + Seek>(
        path: &Path,
        mut reader: R,
        len: u64,
        trusted_keys: &[PublicKey],
        allow_unsigned: bool,
    ) -> Result<Bundle> {
        let err = |p: BundleProblem| BundleError::new(path, p);
        let index = archive::index_entries(&mut reader, len).map_err(|e| err(e.into()))?;
        let small = |name: &str, reader: &mut R| -> Result<Option<Vec<u8>>> {
            let Some(e) = index.iter().find(|e| e.name == name) else {
                return Ok(None);
            };
            if e.size > MAX_MANIFEST_BYTES {
                return Err(err(BundleProblem::EntryTooLarge {
                    name: name.to_string(),
                    size: e.size,
                    max: MAX_MANIFEST_BYTES,
                }));
            }
            archive::read_entry(reader, e, &mut Sha256::new())
                .map(Some)
                .map_err(|e| err(e.into()))
        };
        let manifest_bytes = small(MANIFEST_FILE, &mut reader)?
            .ok_or_else(|| err(BundleProblem::MissingFile(MANIFEST_FILE.into())))?;
        let signature = small(SIGNATURE_FILE, &mut reader)?;

        // The signature first: nothing in an unverified manifest is trusted,
        // and no other file is read before it verifies.
        let signature_status = match (&signature, trusted_keys.is_empty()) {
            (None, _) if allow_unsigned => SignatureStatus::Unsigned,
            (None, _) => return Err(err(BundleProblem::Unsigned)),
            (Some(sig), true) if allow_unsigned => {
                signature::check_signature_format(sig).map_err(|e| err(e.into()))?;
                SignatureStatus::NotChecked
            }
            (Some(sig), _) => {
                let key_index = signature::verify(&manifest_bytes, sig, trusted_keys)
                    .map_err(|e| err(e.into()))?;
                SignatureStatus::Verified {
                    key_index,
                    trusted_comment: signature::trusted_comment(sig).unwrap_or_default(),
                }
            }
        };

        let text = std::str::from_utf8(&manifest_bytes)
            .map_err(|_| err(BundleProblem::ManifestNotText))?;
        let manifest = Manifest::from_yaml(text).map_err(|e| err(e.into()))?;

        if !manifest.files.contains_key(SUPERNET_FILE) {
            return Err(err(BundleProblem::Manifest(ManifestError::Invalid(
                format!("files: `{SUPERNET_FILE}` must be listed"),
            ))));
        }
        let others: Vec<&archive::EntryIndex> = index
            .iter()
            .filter(|e| e.name != MANIFEST_FILE && e.name != SIGNATURE_FILE)
            .collect();
        if let Some(extra) = others
            .iter()
            .find(|e| !manifest.files.contains_key(&e.name))
        {
            return Err(err(BundleProblem::UnlistedFile(extra.name.clone())));
        }
        let mut files = BTreeMap::new();
        for (name, expected) in &manifest.files {
            let entry = others
                .iter()
                .find(|e| &e.name == name)
                .ok_or_else(|| err(BundleProblem::MissingFile(name.clone())))?;
            let mut hasher = Sha256::new();
            let data =
                archive::read_entry(&mut reader, entry, &mut hasher).map_err(|e| err(e.into()))?;
            let actual = hex(&hasher.finalize());
            if &actual != expected {
                return Err(err(BundleProblem::Checksum {
                    file: name.clone(),
                    expected: expected.clone(),
                    actual,
                }));
            }
            files.insert(name.clone(), data);
        }

        let origin = format!("{}:{SUPERNET_FILE}", path.display());
        let model = crate::model_io::decode_model(&files[SUPERNET_FILE], &origin)
            .map_err(|e| err(BundleProblem::Model(e.to_string())))?;
        check_model_against_manifest(&model, &manifest)
            .map_err(|m| err(BundleProblem::ModelMismatch(m)))?;
        let sha256 = sha256_of_reader(&mut reader).map_err(|e| err(BundleProblem::Io(e)))?;

        Ok(Bundle {
            path: path.to_path_buf(),
            manifest,
            manifest_bytes,
            signature,
            signature_status,
            files,
            model,
            sha256,
        })
    }

    /// The raw bytes of `supernet.onnx`.
    pub fn supernet_bytes(&self) -> &[u8] {
        &self.files[SUPERNET_FILE]
    }

    /// Write this bundle to `out` (atomically) with `signature` as its new
    /// `manifest.sig`; the manifest and files are kept byte for byte.
    pub fn write_with_signature(&self, out: &Path, signature: &[u8]) -> Result<()> {
        signature::check_signature_format(signature).map_err(|e| BundleError::new(out, e))?;
        write_archive(out, &self.manifest_bytes, Some(signature), &self.files)
    }
}

/// The manifest names tensors of the supernet: check that they exist.
fn check_model_against_manifest(
    model: &ModelProto,
    m: &Manifest,
) -> std::result::Result<(), String> {
    let graph = model.graph.as_ref().ok_or("it has no graph")?;
    let inputs: std::collections::HashSet<&str> =
        graph.input.iter().map(|v| v.name.as_str()).collect();
    let outputs: std::collections::HashSet<&str> =
        graph.output.iter().map(|v| v.name.as_str()).collect();
    let mut produced: std::collections::HashSet<&str> = inputs.clone();
    for node in &graph.node {
        produced.extend(node.output.iter().map(String::as_str));
    }
    if !inputs.contains(m.input.name.as_str()) {
        return Err(format!(
            "input.name `{}` is not an input of the graph",
            m.input.name
        ));
    }
    if let Some(vi) = graph.input.iter().find(|v| v.name == m.input.name) {
        check_declared_shape("input.shape", &m.input.shape, vi)?;
    }
    for c in &m.cuts {
        if let Some(vi) = graph
            .value_info
            .iter()
            .chain(&graph.output)
            .find(|v| v.name == c.tensor)
        {
            check_declared_shape(&format!("cuts[{}].shape", c.index), &c.shape, vi)?;
        }
    }
    if !outputs.contains(m.output.name.as_str()) {
        return Err(format!(
            "output.name `{}` is not an output of the graph",
            m.output.name
        ));
    }
    for c in &m.cuts {
        if !produced.contains(c.tensor.as_str()) {
            return Err(format!(
                "cut {} tensor `{}` is not in the graph",
                c.index, c.tensor
            ));
        }
    }
    for b in m.branches.iter().filter(|b| b.kind != BranchKind::Original) {
        if !outputs.contains(b.tensor.as_str()) {
            return Err(format!(
                "branch `{}` tensor `{}` is not an output of the graph",
                b.id, b.tensor
            ));
        }
    }
    Ok(())
}

/// A shape the manifest gives must equal the one the graph declares for the
/// same tensor: same rank, same size on every axis after the batch (axis 0
/// is the batch and may be symbolic on either side). A graph dimension that
/// is symbolic (not the batch) is not compared; one the graph does not
/// declare at all is not either (the daemon infers those before use).
fn check_declared_shape(
    at: &str,
    shape: &[Dim],
    vi: &tract_onnx::pb::ValueInfoProto,
) -> std::result::Result<(), String> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
    use tract_onnx::pb::type_proto;
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Ok(());
    };
    let Some(declared) = t.shape.as_ref() else {
        return Ok(());
    };
    let graph_dims: Vec<Option<i64>> = declared
        .dim
        .iter()
        .map(|d| match d.value {
            Some(DimValue::DimValue(v)) if v > 0 => Some(v),
            _ => None,
        })
        .collect();
    let text = |dims: &[Option<i64>]| {
        format!(
            "[{}]",
            dims.iter()
                .map(|d| d.map(|v| v.to_string()).unwrap_or_else(|| "?".into()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if graph_dims.len() != shape.len() {
        return Err(format!(
            "{at} {} has {} dims but the graph's `{}` is {} ({} dims)",
            shape_string(shape),
            shape.len(),
            vi.name,
            text(&graph_dims),
            graph_dims.len()
        ));
    }
    for (axis, (m, g)) in shape.iter().zip(&graph_dims).enumerate().skip(1) {
        if let (Some(g), m) = (g, m) {
            if m.fixed() != Some(*g as usize) {
                return Err(format!(
                    "{at} {} differs from the graph's `{}` {} on axis {axis}",
                    shape_string(shape),
                    vi.name,
                    text(&graph_dims)
                ));
            }
        }
    }
    Ok(())
}

/// Write the tar (manifest, signature, then the other files sorted by name)
/// atomically.
fn write_archive(
    out: &Path,
    manifest_bytes: &[u8],
    signature: Option<&[u8]>,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    let mut entries: Vec<(&str, &[u8])> = vec![(MANIFEST_FILE, manifest_bytes)];
    if let Some(sig) = signature {
        entries.push((SIGNATURE_FILE, sig));
    }
    // supernet.onnx first among the others so `tar t` shows the important part first.
    if let Some(s) = files.get(SUPERNET_FILE) {
        entries.push((SUPERNET_FILE, s));
    }
    entries.extend(
        files
            .iter()
            .filter(|(k, _)| *k != SUPERNET_FILE)
            .map(|(k, v)| (k.as_str(), v.as_slice())),
    );
    let bytes =
        archive::tar_bytes(entries).map_err(|e| BundleError::new(out, BundleProblem::Io(e)))?;
    crate::fsutil::write_atomically(out, &bytes).map_err(|e| {
        let io = match e {
            crate::Error::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        };
        BundleError::new(out, BundleProblem::Io(io))
    })
}

/// Builds a bundle: fills in the checksums, serialises the manifest, has the
/// caller sign it, and writes the tar atomically.
#[derive(Clone, Debug)]
pub struct BundleWriter {
    manifest: Manifest,
    files: BTreeMap<String, Vec<u8>>,
}

impl BundleWriter {
    /// Start from a manifest; its `files` map is recomputed on write.
    pub fn new(manifest: Manifest) -> BundleWriter {
        BundleWriter {
            manifest,
            files: BTreeMap::new(),
        }
    }

    /// Add a file (`supernet.onnx`, `calibration/...`).
    pub fn add_file(
        &mut self,
        name: &str,
        bytes: Vec<u8>,
    ) -> std::result::Result<&mut Self, BundleProblem> {
        let bad = |problem: String| BundleProblem::BadFile {
            name: name.to_string(),
            problem,
        };
        manifest::check_file_name(name).map_err(|e| bad(e.to_string()))?;
        if name == MANIFEST_FILE || name == SIGNATURE_FILE {
            return Err(bad("the writer makes this file itself".into()));
        }
        if name != SUPERNET_FILE && !name.starts_with(CALIBRATION_DIR) {
            return Err(bad(format!(
                "a bundle holds only `{SUPERNET_FILE}` and files under `{CALIBRATION_DIR}`"
            )));
        }
        if self.files.insert(name.to_string(), bytes).is_some() {
            return Err(bad("added twice".into()));
        }
        Ok(self)
    }

    /// The manifest with `files` filled in from the added files.
    pub fn manifest(&self) -> Manifest {
        let mut m = self.manifest.clone();
        m.files = self
            .files
            .iter()
            .map(|(k, v)| (k.clone(), sha256_hex(v)))
            .collect();
        m
    }

    /// The exact `manifest.yaml` bytes that will be written (and signed).
    pub fn manifest_bytes(&self) -> std::result::Result<Vec<u8>, BundleProblem> {
        Ok(self.manifest().to_yaml()?.into_bytes())
    }

    /// Check, sign (when `sign` is given: manifest bytes -> `manifest.sig`
    /// text) and write to `path` atomically; returns the written manifest.
    /// The supernet is decoded and checked against the manifest first, so a
    /// writer does not publish a bundle that [`Bundle::open`] would reject.
    pub fn write(&self, path: &Path, sign: Option<Signer<'_>>) -> Result<Manifest> {
        let err = |p: BundleProblem| BundleError::new(path, p);
        if !self.files.contains_key(SUPERNET_FILE) {
            return Err(err(BundleProblem::MissingFile(SUPERNET_FILE.into())));
        }
        let manifest = self.manifest();
        let manifest_bytes = self.manifest_bytes().map_err(err)?;
        // Check the model and manifest together before anything is written.
        let origin = format!("{}:{SUPERNET_FILE}", path.display());
        let model = crate::model_io::decode_model(&self.files[SUPERNET_FILE], &origin)
            .map_err(|e| err(BundleProblem::Model(e.to_string())))?;
        check_model_against_manifest(&model, &manifest)
            .map_err(|m| err(BundleProblem::ModelMismatch(m)))?;
        let signature = match sign {
            Some(f) => {
                let sig = f(&manifest_bytes).map_err(|e| {
                    err(BundleProblem::Signature(SignatureError::Malformed(
                        format!("signing failed: {e}"),
                    )))
                })?;
                signature::check_signature_format(&sig).map_err(|e| err(e.into()))?;
                Some(sig)
            }
            None => None,
        };
        write_archive(path, &manifest_bytes, signature.as_deref(), &self.files)?;
        Ok(manifest)
    }
}

/// Write a bundle in one call: see [`BundleWriter::write`].
pub fn write_bundle(
    path: &Path,
    manifest: &Manifest,
    files: &[(&str, &[u8])],
    sign: Option<Signer<'_>>,
) -> Result<Manifest> {
    let mut w = BundleWriter::new(manifest.clone());
    for (name, bytes) in files {
        w.add_file(name, bytes.to_vec())
            .map_err(|p| BundleError::new(path, p))?;
    }
    w.write(path, sign)
}

#[cfg(test)]
mod tests;
