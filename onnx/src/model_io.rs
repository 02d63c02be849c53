//! Reading and writing ONNX `ModelProto` files (tract's generated protobuf
//! types, encoded with prost). Every failure names the file and the problem;
//! garbage, truncated or empty input is an error, never a panic.

use std::path::Path;

use prost::Message;
use tract_onnx::pb::ModelProto;

use crate::error::{Error, Result};
use crate::fsutil::write_atomically;

/// Read and validate an ONNX model from a file.
pub fn load_model(path: impl AsRef<Path>) -> Result<ModelProto> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_model(&bytes, &path.display().to_string())
}

/// Decode and validate an ONNX model from bytes; `origin` names the source
/// (a path, or `bundle.tar:supernet.onnx`) in error messages.
pub fn decode_model(bytes: &[u8], origin: &str) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(Error::bad_model(
            origin,
            "the file is empty; expected an ONNX model",
        ));
    }
    let model = ModelProto::decode(bytes).map_err(|e| {
        Error::bad_model(
            origin,
            format!(
                "not a valid ONNX model (truncated, corrupt or not protobuf): {}",
                e.to_string().replace('\n', " ")
            ),
        )
    })?;
    validate(&model).map_err(|problem| Error::bad_model(origin, problem))?;
    Ok(model)
}

/// Structural checks that separate a real ONNX model from bytes that happen to
/// decode as protobuf: a graph with nodes, inputs and outputs, an IR version
/// and an operator set, and outputs that something produces.
fn validate(model: &ModelProto) -> std::result::Result<(), String> {
    let graph = model
        .graph
        .as_ref()
        .ok_or("not an ONNX model: it has no graph")?;
    if model.ir_version <= 0 {
        return Err("not an ONNX model: no IR version".into());
    }
    if model.opset_import.is_empty() {
        return Err("not an ONNX model: no operator set import".into());
    }
    if graph.node.is_empty() {
        return Err("the graph has no nodes".into());
    }
    if graph.output.is_empty() {
        return Err("the graph has no outputs".into());
    }
    let mut known: std::collections::HashSet<&str> =
        graph.input.iter().map(|i| i.name.as_str()).collect();
    known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    for node in &graph.node {
        if node.op_type.is_empty() {
            return Err(format!("node `{}` has no operator type", node.name));
        }
        known.extend(node.output.iter().map(String::as_str));
    }
    for out in &graph.output {
        if !known.contains(out.name.as_str()) {
            return Err(format!(
                "graph output `{}` is produced by no node",
                out.name
            ));
        }
    }
    check_constant_sizes(graph)
}

/// The most elements a tensor whose size comes from constants in the model
/// (`ConstantOfShape`, `Expand`, `Range`) may have: 2^28 (1 GiB of FP32).
/// Real graphs do make large ones this way (the ONNX test zoo's VGG19
/// builds its 25088x4096 weight, 103 M elements, with `ConstantOfShape`).
pub const MAX_CONSTANT_ELEMENTS: u64 = 1 << 28;

/// The largest product of `Tile` repeats.
const MAX_TILE_FACTOR: u64 = 1 << 16;

/// Nothing sized by the model's constants may exceed [`MAX_CONSTANT_ELEMENTS`]:
/// tract folds constants while it analyses a graph, so a 20-byte
/// `ConstantOfShape` of `[2^20, 2^20]` would make it allocate terabytes
/// (found by the `onnx_blocks` fuzz target).
fn check_constant_sizes(graph: &tract_onnx::pb::GraphProto) -> std::result::Result<(), String> {
    use std::collections::HashMap;
    use tract_onnx::pb::TensorProto;
    let mut consts: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
        let value = node.attribute.iter().find(|a| a.name == "value");
        if let (Some(out), Some(t)) = (node.output.first(), value.and_then(|a| a.t.as_ref())) {
            consts.insert(out.as_str(), t);
        }
    }
    let ints = |name: Option<&String>| -> Option<Vec<i64>> {
        let t = consts.get(name?.as_str())?;
        if !t.int64_data.is_empty() {
            return Some(t.int64_data.clone());
        }
        if !t.int32_data.is_empty() {
            return Some(t.int32_data.iter().map(|&v| i64::from(v)).collect());
        }
        (t.raw_data.len() % 8 == 0 && t.data_type == 7).then(|| {
            t.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        })
    };
    let product = |dims: &[i64]| -> u64 {
        dims.iter()
            .fold(1u64, |p, &d| p.saturating_mul(d.unsigned_abs().max(1)))
    };
    for node in &graph.node {
        let (what, n, limit) = match node.op_type.as_str() {
            "ConstantOfShape" => match ints(node.input.first()) {
                Some(shape) => ("a tensor of", product(&shape), MAX_CONSTANT_ELEMENTS),
                None => continue,
            },
            "Expand" => match ints(node.input.get(1)) {
                Some(shape) => ("a tensor of", product(&shape), MAX_CONSTANT_ELEMENTS),
                None => continue,
            },
            "Tile" => match ints(node.input.get(1)) {
                Some(repeats) => ("its input repeated", product(&repeats), MAX_TILE_FACTOR),
                None => continue,
            },
            "Range" => {
                let one = |i: usize| ints(node.input.get(i)).and_then(|v| v.first().copied());
                match (one(0), one(1), one(2)) {
                    (Some(start), Some(limit), Some(delta)) if delta != 0 => {
                        let span = (i128::from(limit) - i128::from(start)) / i128::from(delta);
                        let n = u64::try_from(span.max(0)).unwrap_or(u64::MAX);
                        ("a range of", n, MAX_CONSTANT_ELEMENTS)
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        if n > limit {
            return Err(format!(
                "node `{}` ({}) would make {what} {n} elements (at most {limit}): refusing the model",
                node.name, node.op_type
            ));
        }
    }
    Ok(())
}

/// Encode a model to bytes.
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Write a model atomically: to a temporary file beside `path`, fsync, rename.
/// A reader never sees a half-written model, and a failure leaves nothing at
/// `path`.
pub fn save_model(path: impl AsRef<Path>, model: &ModelProto) -> Result<()> {
    write_atomically(path.as_ref(), &encode_model(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/oracle/fmnist_resnet.onnx");
        std::fs::read(p).expect("fixture present")
    }

    #[test]
    fn decodes_the_fixture_and_round_trips() {
        let bytes = fixture();
        let m = decode_model(&bytes, "fixture").unwrap();
        let again = decode_model(&encode_model(&m), "again").unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn empty_truncated_and_text_input_are_errors_naming_the_origin() {
        let bytes = fixture();
        for (what, input) in [
            ("empty", Vec::new()),
            ("truncated", bytes[..bytes.len() - 1000].to_vec()),
            ("text", b"name,value\nalpha,1\n".to_vec()),
            ("zeros", vec![0u8; 64]),
        ] {
            let err = decode_model(&input, "/some/model.onnx")
                .expect_err(what)
                .to_string();
            assert!(err.starts_with("/some/model.onnx: "), "{what}: {err}");
            assert!(!err.contains('\n'), "{what}: {err}");
        }
        for cut in [1, 10, 100, 1000, 10_000, 100_000] {
            assert!(
                decode_model(&bytes[..cut], "x").is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
    }

    #[test]
    fn a_constant_of_shape_too_large_to_allocate_is_refused() {
        use tract_onnx::pb::{
            GraphProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
        };
        let model = |dims: Vec<i64>| ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    name: "big".into(),
                    op_type: "ConstantOfShape".into(),
                    input: vec!["shape".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                initializer: vec![TensorProto {
                    name: "shape".into(),
                    data_type: 7,
                    dims: vec![dims.len() as i64],
                    raw_data: dims.iter().flat_map(|d| d.to_le_bytes()).collect(),
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: "y".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = decode_model(&encode_model(&model(vec![1 << 20, 1 << 20])), "big.onnx")
            .expect_err("a 2^40-element constant")
            .to_string();
        assert!(
            err.contains("`big` (ConstantOfShape)") && err.contains("refusing"),
            "{err}"
        );
        decode_model(&encode_model(&model(vec![4, 8])), "small.onnx").expect("a small constant");
    }

    #[test]
    fn save_is_atomic_and_load_names_missing_files() {
        let dir = std::env::temp_dir().join(format!("adaptivenet-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = decode_model(&fixture(), "fixture").unwrap();
        let p = dir.join("m.onnx");
        save_model(&p, &m).unwrap();
        assert_eq!(load_model(&p).unwrap(), m);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        let err = load_model(dir.join("nope.onnx")).unwrap_err().to_string();
        assert!(err.contains("nope.onnx"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
