//! The supernet: the oracle graph plus every branch's nodes, each branch
//! writing `branch/{id}` exposed as an extra graph output, so the file run as
//! is computes the oracle's output and any ONNX tool opens it. Also the path
//! of spans that a subnet id stands for, and the manifest copy kept in the
//! ONNX file's `metadata_props`.

use tract_onnx::pb::{ModelProto, StringStringEntryProto};

use crate::blocks::Span;
use crate::branches::BuiltBranch;
use crate::bundle::{Manifest, SubnetId};
use crate::error::{Error, Result};
use crate::extract::{batched, value_info};
use crate::oracle::Oracle;

/// `metadata_props` key holding the manifest YAML.
pub const MANIFEST_PROP: &str = "adaptivenet.manifest";

/// The oracle with `branches` added.
pub fn assemble(oracle: &Oracle, branches: &[BuiltBranch]) -> Result<ModelProto> {
    let mut model = oracle.model.clone();
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::Graph("oracle has no graph".into()))?;
    for b in branches {
        let to_cut = b.id.to_cut();
        let shape = &oracle.facts.get(&oracle.layout.cuts[to_cut])?.shape;
        graph.node.extend(b.nodes.iter().cloned());
        graph.initializer.extend(b.initializers.iter().cloned());
        graph
            .output
            .push(value_info(&b.output, 1, Some(&batched(shape))));
    }
    Ok(model)
}

/// Store the manifest in the model's `metadata_props` (replacing an old copy).
pub fn embed_manifest(model: &mut ModelProto, manifest_yaml: &str) {
    model.metadata_props.retain(|p| p.key != MANIFEST_PROP);
    model.metadata_props.push(StringStringEntryProto {
        key: MANIFEST_PROP.into(),
        value: manifest_yaml.into(),
    });
}

/// The spans a subnet runs: input -> c_0, each branch c_from -> its tensor,
/// c_N -> output. `extract::materialise` rewires each span's input to the
/// previous span's output.
pub fn subnet_path(manifest: &Manifest, subnet: &SubnetId) -> Result<Vec<Span>> {
    manifest
        .validate_subnet(subnet)
        .map_err(|e| Error::Graph(format!("subnet `{subnet}`: {}", e.0)))?;
    let cut = |i: usize| -> Result<&str> {
        manifest
            .cuts
            .get(i)
            .map(|c| c.tensor.as_str())
            .ok_or_else(|| Error::Graph(format!("the manifest has no cut {i}")))
    };
    let mut path = vec![Span::new(&manifest.input.name, cut(0)?)];
    for id in subnet.branches() {
        let b = manifest
            .branch(id)
            .ok_or_else(|| Error::Graph(format!("no branch `{id}` in the manifest")))?;
        path.push(Span::new(cut(b.from)?, &b.tensor));
    }
    path.push(Span::new(
        cut(manifest.num_blocks())?,
        &manifest.output.name,
    ));
    Ok(path)
}
