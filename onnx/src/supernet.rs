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

/// Which branches to build (the branch part of `elastify.yaml`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BranchSpec {
    /// Merge spans, in blocks (each >= 2).
    pub merge_spans: Vec<usize>,
    /// Shrink ratios (strictly between 0 and 1, whole percentages).
    pub shrink_ratios: Vec<f64>,
    /// Blocks that no new branch may replace.
    pub skip_blocks: Vec<usize>,
    /// How merges pick the block they copy.
    pub merge_source: crate::branches::MergeSource,
    /// Seed for layers that have to be re-created.
    pub seed: u64,
}

impl Default for BranchSpec {
    fn default() -> Self {
        BranchSpec {
            merge_spans: vec![2, 3],
            shrink_ratios: vec![0.5, 0.25],
            skip_blocks: vec![],
            merge_source: crate::branches::MergeSource::Best,
            seed: 0,
        }
    }
}

/// Build every branch the spec asks for.
pub fn build_branches(oracle: &Oracle, spec: &BranchSpec) -> Result<Vec<BuiltBranch>> {
    use crate::branches::{build_merge, build_shrink};
    let n = oracle.layout.num_blocks();
    let free = |a: usize, b: usize| (a..b).all(|i| !spec.skip_blocks.contains(&i));
    let mut out = Vec::new();
    for &span in &spec.merge_spans {
        if span < 2 {
            return Err(Error::Graph(format!(
                "merge span {span} must be at least 2"
            )));
        }
        for from in 0..n.saturating_sub(span - 1) {
            if free(from, from + span) {
                let merge =
                    build_merge(oracle, from, span, spec.merge_source, spec.seed).map_err(|e| {
                        match e {
                            Error::Graph(m) => Error::Graph(format!(
                            "{m}; drop {span} from `branches.merge_spans` or list one of blocks \
                             {from}-{} in `branches.skip_blocks` of the elastify spec",
                            from + span - 1
                        )),
                            other => other,
                        }
                    })?;
                out.push(merge);
            }
        }
    }
    for b in 0..n {
        if !free(b, b + 1) {
            continue;
        }
        for &r in &spec.shrink_ratios {
            out.push(build_shrink(oracle, b, r)?);
        }
    }
    Ok(out)
}

/// A supernet tract cannot analyse: name the new branch its failing node
/// belongs to (nodes of branch `ID` are named `branch/ID/...`).
fn name_broken_branch(e: Error, branches: &[BuiltBranch]) -> Error {
    let text = e.to_string();
    let Some(b) = branches
        .iter()
        .find(|b| text.contains(&format!("branch/{}/", b.id)))
    else {
        return e;
    };
    Error::Graph(format!(
        "branch {} is not a valid graph ({text}); list one of blocks {}-{} in \
         `branches.skip_blocks` of the elastify spec",
        b.id,
        b.id.from_cut(),
        b.id.to_cut() - 1
    ))
}

/// The supernet model and its manifest (checksums not yet filled in): the
/// oracle's cuts and original blocks, and every built branch with its MACs
/// and parameter count measured on the supernet graph.
pub fn supernet_with_manifest(
    oracle: &Oracle,
    branches: &[BuiltBranch],
    desc: &crate::bundle::ModelDescription,
) -> Result<(ModelProto, Manifest)> {
    use crate::bundle::{Branch, BranchKind};
    let model = assemble(oracle, branches)?;
    let index = crate::graph::GraphIndex::of_model(&model)?;
    let facts =
        crate::facts::infer_facts(&model, 1).map_err(|e| name_broken_branch(e, branches))?;
    // A branch stands in for its span: it must write the span's output shape.
    for b in branches {
        let want = &oracle.facts.get(&oracle.layout.cuts[b.id.to_cut()])?.shape;
        let got = &facts.get(&b.output)?.shape;
        if got != want {
            let (from, to) = (b.id.from_cut(), b.id.to_cut());
            return Err(Error::Graph(format!(
                "branch {} writes {got:?} where blocks {from}-{} write {want:?} (its copy of \
                 block {} cannot be reshaped to the span); list one of blocks {from}-{} in \
                 `branches.skip_blocks` of the elastify spec",
                b.id,
                to - 1,
                b.source_block,
                to - 1
            )));
        }
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("supernet has no graph".into()))?;
    let mut manifest = crate::bundle::oracle_manifest(oracle, desc)?;
    for b in branches {
        let from = b.id.from_cut();
        let stats = crate::stats::span_stats(
            graph,
            &index,
            &facts,
            &Span::new(&oracle.layout.cuts[from], &b.output),
        )?;
        let mut params = std::collections::BTreeMap::new();
        let kind = match b.id {
            crate::bundle::BranchId::Merge { span, .. } => {
                params.insert("span".to_string(), serde_json::json!(span));
                params.insert(
                    "source_block".to_string(),
                    serde_json::json!(b.source_block),
                );
                if !b.reinitialised.is_empty() {
                    params.insert(
                        "reinitialised".to_string(),
                        serde_json::json!(b.reinitialised),
                    );
                }
                BranchKind::Merge
            }
            crate::bundle::BranchId::Shrink { percent, .. } => {
                params.insert(
                    "ratio".to_string(),
                    serde_json::json!(percent as f64 / 100.0),
                );
                BranchKind::Shrink
            }
            crate::bundle::BranchId::Original { .. } => {
                return Err(Error::Graph(format!(
                    "`{}` is an original block, not a new branch",
                    b.id
                )))
            }
        };
        manifest.branches.push(Branch {
            id: b.id,
            from,
            to: b.id.to_cut(),
            kind,
            params,
            tensor: b.output.clone(),
            macs: stats.macs,
            param_count: stats.params,
            distill_loss: None,
        });
    }
    Ok((model, manifest))
}
