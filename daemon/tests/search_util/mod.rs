//! Shared by the search tests: the untrained supernet bundle of the oracle
//! fixture (33 branches, pretrained-weight copies), signed with the demo key,
//! built once per test process; the Fashion-MNIST data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use adaptivenet_daemon::search::baseline::build_untrained_bundle;
use adaptivenet_onnx::bundle::{read_public_key, Bundle, PublicKey};
use adaptivenet_onnx::dataset::{Dataset, Preprocess};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn demo_pub_path() -> PathBuf {
    repo().join("tests/fixtures/keys/demo.pub")
}

pub fn demo_pub() -> PublicKey {
    read_public_key(&demo_pub_path()).expect("demo.pub")
}

fn demo_sign(data: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/keys/demo.key"))
        .map_err(|e| e.to_string())?;
    let sk = minisign::SecretKey::from_unencrypted_box(
        minisign::SecretKeyBox::from_string(&text).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    minisign::sign(
        None,
        &sk,
        std::io::Cursor::new(data),
        Some("file:manifest.yaml"),
        None,
    )
    .map(|b| b.into_string().into_bytes())
    .map_err(|e| e.to_string())
}

/// A fresh temp folder for this test process.
pub fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("adaptivenet-search-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The signed untrained bundle (built once).
pub fn bundle_path() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tmp("bundle");
        let out = dir.join("untrained.bundle");
        build_untrained_bundle(
            &repo().join("tests/fixtures/oracle/fmnist_resnet.onnx"),
            &out,
            Some(&demo_sign),
        )
        .expect("building the untrained bundle");
        out
    })
    .clone()
}

pub fn bundle() -> Bundle {
    Bundle::open(bundle_path(), &[demo_pub()], false).expect("opening the bundle")
}

pub const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

/// `idx:` source of the committed 1k subset with a slice.
pub fn subset_source(slice: &str) -> String {
    let d = repo().join("tests/fixtures/data");
    format!(
        "idx:{},{}{slice}",
        d.join("fmnist-test-1k-images-idx3-ubyte.gz").display(),
        d.join("fmnist-test-1k-labels-idx1-ubyte.gz").display()
    )
}

/// The first `n` images of the committed 1k subset, preprocessed for the bundle.
pub fn subset(n: usize) -> Dataset {
    let d = repo().join("tests/fixtures/data");
    Dataset::from_idx(
        &d.join("fmnist-test-1k-images-idx3-ubyte.gz"),
        Some(&d.join("fmnist-test-1k-labels-idx1-ubyte.gz")),
        &Preprocess {
            mean: vec![0.2860],
            std: vec![0.3530],
        },
        0..n,
    )
    .unwrap()
}
