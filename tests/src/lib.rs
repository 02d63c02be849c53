//! Shared helpers for the end-to-end tests and benchmarks: where the
//! committed fixtures live, the Fashion-MNIST data sets, and the fixture
//! oracle's preprocessing.

use std::path::{Path, PathBuf};

use adaptivenet_onnx::dataset::{Dataset, Preprocess};

/// `tests/fixtures` in the source tree.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The PyTorch-exported oracle fixture.
pub fn oracle_path() -> PathBuf {
    fixtures().join("oracle/fmnist_resnet.onnx")
}

/// Third-party graphs from the `onnx` wheel.
pub fn thirdparty(name: &str) -> PathBuf {
    fixtures().join("thirdparty").join(name)
}

/// The oracle's input normalisation, read from the JSON written at training time.
pub fn oracle_preprocess() -> anyhow::Result<Preprocess> {
    let path = fixtures().join("oracle/fmnist_resnet.json");
    let text = std::fs::read_to_string(&path)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let num = |k: &str| -> anyhow::Result<Vec<f32>> {
        let x = &v[k];
        if let Some(a) = x.as_array() {
            Ok(a.iter()
                .filter_map(|e| e.as_f64())
                .map(|f| f as f32)
                .collect())
        } else {
            x.as_f64()
                .map(|f| vec![f as f32])
                .ok_or_else(|| anyhow::anyhow!("{}: no `{k}`", path.display()))
        }
    };
    Ok(Preprocess {
        mean: num("mean")?,
        std: num("std")?,
    })
}

/// The committed 1,000-image Fashion-MNIST test subset.
pub fn fmnist_subset() -> anyhow::Result<Dataset> {
    let d = fixtures().join("data");
    Ok(Dataset::from_idx(
        &d.join("fmnist-test-1k-images-idx3-ubyte.gz"),
        Some(&d.join("fmnist-test-1k-labels-idx1-ubyte.gz")),
        &oracle_preprocess()?,
        0..usize::MAX,
    )?)
}

/// Directory of Debian's `dataset-fashion-mnist` package.
pub const FMNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The full 10k Fashion-MNIST test set from Debian's package (installed by `.ci/run`).
pub fn fmnist_test_full() -> anyhow::Result<Dataset> {
    let d = Path::new(FMNIST_DIR);
    let images = d.join("t10k-images-idx3-ubyte.gz");
    let labels = d.join("t10k-labels-idx1-ubyte.gz");
    anyhow::ensure!(
        images.exists(),
        "{} is missing: install Debian's dataset-fashion-mnist (as .ci/run does)",
        images.display()
    );
    Ok(Dataset::from_idx(
        &images,
        Some(&labels),
        &oracle_preprocess()?,
        0..usize::MAX,
    )?)
}
