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

/// The MobileNetV2-style oracle fixture (`tests/fixtures/make_mobilenet.py`).
/// It uses the same input normalisation as the ResNet fixture, so
/// [`fmnist_subset`] and `oracle/ref_input.npy` serve both.
pub fn mobilenet_path() -> PathBuf {
    fixtures().join("oracle/fmnist_mobilenetv2.onnx")
}

/// Run `model` on `input` with onnxruntime through `tests/scripts/ort_run.py`
/// (`python3` with onnxruntime, as `scripts/install-deps.sh` installs) and
/// return its first output. `tag` names the temporary directory and messages.
pub fn onnxruntime(
    model: &adaptivenet_onnx::tract_onnx::pb::ModelProto,
    input: &adaptivenet_onnx::tract_onnx::prelude::Tensor,
    tag: &str,
) -> anyhow::Result<adaptivenet_onnx::tract_onnx::prelude::Tensor> {
    use adaptivenet_onnx::npy::{encode_npy_f32, read_npy};
    use adaptivenet_onnx::tract_onnx::prelude::Tensor;
    let dir = std::env::temp_dir().join(format!(
        "adaptivenet-ort-{}-{}",
        std::process::id(),
        tag.replace(['/', '@', ' '], "_")
    ));
    std::fs::create_dir_all(&dir)?;
    let (m, i, o) = (
        dir.join("model.onnx"),
        dir.join("in.npy"),
        dir.join("out.npy"),
    );
    adaptivenet_onnx::save_model(&m, model)?;
    let data: Vec<f32> = input
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect();
    std::fs::write(&i, encode_npy_f32(input.shape(), &data))?;
    let script = fixtures().join("../scripts/ort_run.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&m)
        .arg(&i)
        .arg(&o)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "onnxruntime refused {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = read_npy(&o)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Tensor::from_shape(&a.shape, &a.to_f32())?)
}

/// The oracle with the input channels of every conv that reads a pruned
/// layer of shrink branch `b` set to zero where the shrink dropped them:
/// the model the shrink must equal (up to summation order), since a reading
/// conv is the only place the dropped channels could act.
pub fn oracle_with_dropped_channels_zeroed(
    oracle: &adaptivenet_onnx::Oracle,
    b: &adaptivenet_onnx::branches::BuiltBranch,
) -> anyhow::Result<adaptivenet_onnx::tract_onnx::pb::ModelProto> {
    use adaptivenet_onnx::weights::{dims, make_f32, read_f32};
    let mut m = oracle.model.clone();
    let g = m
        .graph
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no graph"))?;
    for layer in &b.pruned {
        for reader in &layer.readers {
            let wname = g
                .node
                .iter()
                .find(|n| &n.name == reader)
                .and_then(|n| n.input.get(1))
                .ok_or_else(|| anyhow::anyhow!("no conv `{reader}` with a weight"))?
                .clone();
            let t = g
                .initializer
                .iter_mut()
                .find(|t| t.name == wname)
                .ok_or_else(|| anyhow::anyhow!("no initializer `{wname}`"))?;
            let d = dims(t);
            let mut w = read_f32(t)?;
            let inner: usize = d[2..].iter().product();
            for o in 0..d[0] {
                for c in (0..d[1]).filter(|c| !layer.keep.contains(c)) {
                    for k in 0..inner {
                        w[(o * d[1] + c) * inner + k] = 0.0;
                    }
                }
            }
            *t = make_f32(&wname, &d, &w);
        }
    }
    Ok(m)
}
