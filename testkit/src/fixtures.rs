//! Where the committed fixtures live, defined once: the oracle fixture, the
//! demo bundle and key, the third-party graphs, the committed 1k
//! Fashion-MNIST subset and Debian's full data set, the fixture's
//! preprocessing and labels.

use std::path::{Path, PathBuf};

use adaptivenet_onnx::dataset::{Dataset, Preprocess};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository root")
        .to_path_buf()
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// The PyTorch-exported oracle fixture (9-block ResNet on Fashion-MNIST).
pub fn oracle_path() -> PathBuf {
    fixtures().join("oracle/fmnist_resnet.onnx")
}

/// The MobileNetV2-style oracle fixture (`tests/fixtures/make_mobilenet.py`);
/// it uses the ResNet fixture's input normalisation.
pub fn mobilenet_path() -> PathBuf {
    fixtures().join("oracle/fmnist_mobilenetv2.onnx")
}

/// Third-party graphs from the `onnx` wheel.
pub fn thirdparty(name: &str) -> PathBuf {
    fixtures().join("thirdparty").join(name)
}

/// The committed, trained demo bundle.
pub fn demo_bundle() -> PathBuf {
    repo().join("demo/fmnist-resnet.bundle")
}

/// The second demo bundle: the MobileNetV2-style fixture elastified
/// (`demo/make-demo-bundle.sh mobilenetv2`).
pub fn demo_mobilenet_bundle() -> PathBuf {
    repo().join("demo/fmnist-mobilenetv2.bundle")
}

/// The demo public key (demos and tests only).
pub fn demo_pub() -> PathBuf {
    fixtures().join("keys/demo.pub")
}

/// The demo secret key (demos and tests only).
pub fn demo_key_path() -> PathBuf {
    fixtures().join("keys/demo.key")
}

/// The Fashion-MNIST class names, index = class id.
pub const FMNIST_LABELS: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The fixture oracle's input normalisation (as in its training script).
pub fn fmnist_preprocess() -> Preprocess {
    Preprocess {
        mean: vec![0.2860],
        std: vec![0.3530],
    }
}

/// The committed 1,000-image Fashion-MNIST test subset: images and labels.
pub fn subset_files() -> (PathBuf, PathBuf) {
    let d = fixtures().join("data");
    (
        d.join("fmnist-test-1k-images-idx3-ubyte.gz"),
        d.join("fmnist-test-1k-labels-idx1-ubyte.gz"),
    )
}

/// `idx:` source of the committed 1k subset with a slice (`[0:200]`).
pub fn subset_source(slice: &str) -> String {
    let (i, l) = subset_files();
    format!("idx:{},{}{slice}", i.display(), l.display())
}

/// The first `n` images of the committed 1k subset, preprocessed.
pub fn subset(n: usize) -> Dataset {
    let (i, l) = subset_files();
    Dataset::from_idx(&i, Some(&l), &fmnist_preprocess(), 0..n).expect("the committed 1k subset")
}

/// Directory of Debian's `dataset-fashion-mnist` package.
pub const FMNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The full 10k Fashion-MNIST test set (images, labels) from Debian's package.
pub fn fmnist_test_files() -> (PathBuf, PathBuf) {
    let d = Path::new(FMNIST_DIR);
    let images = d.join("t10k-images-idx3-ubyte.gz");
    assert!(
        images.exists(),
        "{} is missing: install Debian's dataset-fashion-mnist (scripts/install-deps.sh does)",
        images.display()
    );
    (images, d.join("t10k-labels-idx1-ubyte.gz"))
}

/// The full 10k Fashion-MNIST test set, preprocessed.
pub fn fmnist_test_full() -> Dataset {
    let (i, l) = fmnist_test_files();
    Dataset::from_idx(&i, Some(&l), &fmnist_preprocess(), 0..usize::MAX)
        .expect("the Fashion-MNIST test set")
}
