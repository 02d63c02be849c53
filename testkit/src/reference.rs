//! References the tests compare our results against: onnxruntime run on a
//! model (through `tests/scripts/ort_run.py`), and the oracle with the
//! channels a shrink branch dropped zeroed in the convs that read them.

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
    let script = crate::fixtures::repo().join("tests/scripts/ort_run.py");
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
    Tensor::from_shape(&a.shape, &a.to_f32())
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
