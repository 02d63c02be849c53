//! Bundles for the tests, built from the committed oracle fixture: the
//! oracle-only bundle, signed with the demo key (or with a signature of
//! another manifest, or with flipped bytes), the untrained supernet bundle
//! (33 branches copied from the pretrained blocks), and the documented way
//! to drop one (write `NAME.part`, rename).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use adaptivenet_onnx::bundle::{
    oracle_manifest, read_public_key, Bundle, BundleWriter, ModelDescription, Preprocess,
    PublicKey, SignError, Signer, SUPERNET_FILE,
};
use adaptivenet_onnx::model_io::encode_model;
use adaptivenet_onnx::supernet::{
    build_branches, embed_manifest, supernet_with_manifest, BranchSpec,
};
use adaptivenet_onnx::Oracle;

use crate::fixtures::{self, FMNIST_LABELS};
use crate::tempdir::TempDir;

/// The Fashion-MNIST fixture's model description at `version`.
pub fn fmnist_description(name: &str, version: u64) -> ModelDescription {
    ModelDescription {
        name: name.into(),
        version,
        compatible: "generic-cpu".into(),
        preprocess: Preprocess {
            mean: vec![0.2860],
            std: vec![0.3530],
        },
        labels: FMNIST_LABELS.iter().map(|s| s.to_string()).collect(),
    }
}

/// Write an unsigned oracle-only bundle of the fixture at `out`.
pub fn build_oracle_bundle(
    oracle_path: &Path,
    out: &Path,
    version: u64,
) -> adaptivenet_onnx::Result<()> {
    let oracle = Oracle::load(oracle_path, None)?;
    let manifest = oracle_manifest(&oracle, &fmnist_description("fmnist-resnet", version))?;
    let bytes = std::fs::read(oracle_path).map_err(|e| adaptivenet_onnx::Error::Io {
        path: oracle_path.to_path_buf(),
        source: e,
    })?;
    let mut w = BundleWriter::new(manifest);
    w.add_file(SUPERNET_FILE, bytes)
        .map_err(|e| adaptivenet_onnx::Error::Graph(e.to_string()))?;
    w.write(out, None)?;
    Ok(())
}

/// Write the untrained supernet bundle of `oracle` (merge spans 2 and 3,
/// shrink ratios 0.5 and 0.25, branches left as copies of the pretrained
/// blocks) to `out`, signed by `sign` if given. Searched like any bundle,
/// it is the "untrained branches" baseline.
pub fn build_untrained_bundle(
    oracle: &Path,
    out: &Path,
    sign: Option<Signer<'_>>,
) -> adaptivenet_onnx::Result<()> {
    let oracle = Oracle::load(oracle, None)?;
    let branches = build_branches(&oracle, &BranchSpec::default())?;
    let desc = fmnist_description("fmnist-resnet-untrained", 1);
    let (mut model, manifest) = supernet_with_manifest(&oracle, &branches, &desc)?;
    let yaml = manifest
        .to_yaml()
        .map_err(|e| adaptivenet_onnx::Error::Graph(e.to_string()))?;
    embed_manifest(&mut model, &yaml);
    let mut w = BundleWriter::new(manifest);
    w.add_file(SUPERNET_FILE, encode_model(&model))
        .map_err(|e| adaptivenet_onnx::Error::Graph(e.to_string()))?;
    w.write(out, sign)?;
    Ok(())
}

/// The demo public key, parsed.
pub fn demo_public_key() -> PublicKey {
    read_public_key(&fixtures::demo_pub()).expect("tests/fixtures/keys/demo.pub")
}

/// Sign with the demo key (a [`Signer`]).
pub fn demo_sign(data: &[u8]) -> Result<Vec<u8>, SignError> {
    Ok(sign(&demo_key(), data))
}

/// The signed untrained bundle, built once per test process.
pub fn untrained_bundle_path() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("adaptivenet-untrained-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("untrained.bundle");
        build_untrained_bundle(&fixtures::oracle_path(), &out, Some(&demo_sign))
            .expect("building the untrained bundle");
        out
    })
    .clone()
}

/// The signed untrained bundle, opened and verified.
pub fn untrained_bundle() -> Bundle {
    Bundle::open(untrained_bundle_path(), &[demo_public_key()], false)
        .expect("opening the untrained bundle")
}

fn secret_key(path: &Path) -> minisign::SecretKey {
    let text = std::fs::read_to_string(path).expect("secret key");
    minisign::SecretKey::from_unencrypted_box(
        minisign::SecretKeyBox::from_string(&text).expect("key box"),
    )
    .expect("an unencrypted minisign key")
}

/// A minisign signature of `data` (the text of `manifest.sig`).
pub fn sign(sk: &minisign::SecretKey, data: &[u8]) -> Vec<u8> {
    minisign::sign(
        None,
        sk,
        std::io::Cursor::new(data),
        Some("file:manifest.yaml"),
        None,
    )
    .expect("signing")
    .into_string()
    .into_bytes()
}

pub fn demo_key() -> minisign::SecretKey {
    secret_key(&fixtures::demo_key_path())
}

/// An oracle-only bundle of the fixture at `version`, signed with the demo
/// key; returns its bytes.
pub fn signed_bundle(version: u64) -> Vec<u8> {
    let dir = TempDir::new("mk");
    let unsigned = dir.path().join("u.bundle");
    build_oracle_bundle(&fixtures::oracle_path(), &unsigned, version).expect("building a bundle");
    let b = Bundle::open(&unsigned, &[], true).expect("open unsigned");
    let out = dir.path().join("s.bundle");
    b.write_with_signature(&out, &sign(&demo_key(), &b.manifest_bytes))
        .expect("write signed");
    std::fs::read(&out).expect("read signed")
}

/// A bundle of `version` whose signature is that of another manifest (the
/// signature does not match).
pub fn badly_signed_bundle(version: u64) -> Vec<u8> {
    let dir = TempDir::new("bad");
    let a = dir.path().join("a.bundle");
    let b = dir.path().join("b.bundle");
    build_oracle_bundle(&fixtures::oracle_path(), &a, version).expect("bundle a");
    build_oracle_bundle(&fixtures::oracle_path(), &b, version + 100).expect("bundle b");
    let ba = Bundle::open(&a, &[], true).expect("open a");
    let bb = Bundle::open(&b, &[], true).expect("open b");
    let out = dir.path().join("x.bundle");
    ba.write_with_signature(&out, &sign(&demo_key(), &bb.manifest_bytes))
        .expect("write");
    std::fs::read(&out).expect("read")
}

/// A valid signed bundle with some bytes of its supernet flipped.
pub fn corrupt_bundle(version: u64) -> Vec<u8> {
    let mut bytes = signed_bundle(version);
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 16] {
        *b ^= 0x5a;
    }
    bytes
}

/// Drop a bundle the recommended way: write `NAME.part`, then rename.
pub fn drop_bundle(dir: &Path, name: &str, bytes: &[u8]) {
    let part = dir.join(format!("{name}.part"));
    std::fs::write(&part, bytes).expect("write .part");
    std::fs::rename(&part, dir.join(name)).expect("rename");
}

/// The bundle `bytes` with its `manifest.yaml` text changed by `edit` and
/// signed again with the demo key (the other files byte for byte): a
/// correctly signed bundle whose manifest says what `edit` makes it say.
pub fn resigned_with_manifest(bytes: &[u8], edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    let dir = TempDir::new("resign");
    let src = dir.path().join("src.bundle");
    std::fs::write(&src, bytes).expect("write the source bundle");
    let mut b = Bundle::open(&src, &[], true).expect("open the source bundle");
    let text = std::str::from_utf8(&b.manifest_bytes).expect("manifest text");
    let edited = edit(text);
    assert_ne!(edited, text, "the edit changed nothing");
    b.manifest_bytes = edited.into_bytes();
    let out = dir.path().join("out.bundle");
    b.write_with_signature(&out, &sign(&demo_key(), &b.manifest_bytes))
        .expect("write the re-signed bundle");
    std::fs::read(&out).expect("read the re-signed bundle")
}
