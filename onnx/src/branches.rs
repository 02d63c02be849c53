//! Building new branches from the oracle's blocks, as ONNX nodes and weights:
//! - **merge** `m{i}x{k}`: one block replaces the span c_i -> c_{i+k}. It is a
//!   copy of a block of the span with its pretrained weights: the span's first
//!   block when its shapes fit, else a block of the span whose input and
//!   output shapes equal the span's (so no layer is re-created), else the
//!   first block with the span's strides folded into its entry convs and the
//!   layers whose shape must change re-created (reported).
//! - **shrink** `s{b}@{pct}`: a copy of block b whose hidden channels (outputs
//!   of convs that do not feed the block's merge directly) are pruned to a
//!   ratio, keeping the filters with the largest L1 norm and their weights.
//!
//! A branch reads the oracle's cut tensor c_from and writes `branch/{id}`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto, NodeProto, TensorProto};

use crate::bundle::BranchId;
use crate::error::{Error, Result};
use crate::oracle::Oracle;
use crate::weights::{dims, kaiming_uniform, make_f32, read_f32, SplitMix};

/// How a merge branch picks the block it copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeSource {
    /// The span's first block, re-creating what must change.
    First,
    /// The first block if it fits, else a block of the span whose shapes fit.
    Best,
}

/// A built branch: nodes and initializers to add to the supernet.
#[derive(Debug, Clone)]
pub struct BuiltBranch {
    pub id: BranchId,
    /// The supernet tensor it writes.
    pub output: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    /// The oracle block it was copied from.
    pub source_block: usize,
    /// Layers re-created (new weights) because their shape had to change, or added.
    pub reinitialised: Vec<String>,
}

/// The tensor a branch writes.
pub fn branch_tensor(id: &BranchId) -> String {
    format!("branch/{id}")
}

/// A copy of one block under a prefix, with its input rewired.
struct BlockCopy {
    nodes: Vec<NodeProto>,
    inits: HashMap<String, TensorProto>,
    output: String,
}

impl BlockCopy {
    fn new(
        oracle: &Oracle,
        block: usize,
        input: &str,
        prefix: &str,
        output: &str,
    ) -> Result<BlockCopy> {
        let graph = oracle.graph();
        let from = &oracle.layout.cuts[block];
        let to = &oracle.layout.cuts[block + 1];
        let ids = oracle.index.nodes_between(graph, from, &[to.as_str()])?;
        let produced: HashSet<&str> = ids
            .iter()
            .flat_map(|&i| graph.node[i].output.iter().map(String::as_str))
            .collect();
        let all_inits: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let rename = |t: &str| -> String {
            if t == to {
                output.to_string()
            } else {
                format!("{prefix}/{t}")
            }
        };
        let mut inits = HashMap::new();
        let mut nodes = Vec::new();
        for &i in &ids {
            let mut n = graph.node[i].clone();
            n.name = format!(
                "{prefix}/{}",
                if n.name.is_empty() {
                    &n.output[0]
                } else {
                    &n.name
                }
            );
            for inp in n.input.iter_mut().filter(|s| !s.is_empty()) {
                if inp == from {
                    *inp = input.to_string();
                } else if produced.contains(inp.as_str()) {
                    *inp = rename(inp);
                } else if let Some(t) = all_inits.get(inp.as_str()) {
                    let new = format!("{prefix}/{inp}");
                    let mut t = (*t).clone();
                    t.name = new.clone();
                    inits.insert(new.clone(), t);
                    *inp = new;
                }
            }
            for out in n.output.iter_mut().filter(|s| !s.is_empty()) {
                *out = rename(out);
            }
            nodes.push(n);
        }
        Ok(BlockCopy {
            nodes,
            inits,
            output: output.to_string(),
        })
    }

    fn consumers(&self, t: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].input.iter().any(|x| x == t))
            .collect()
    }
    fn weight(&self, node: usize, k: usize) -> Option<&TensorProto> {
        self.nodes[node]
            .input
            .get(k)
            .and_then(|n| self.inits.get(n))
    }
    fn data_inputs(&self, node: usize) -> Vec<String> {
        self.nodes[node]
            .input
            .iter()
            .filter(|i| !i.is_empty() && !self.inits.contains_key(*i))
            .cloned()
            .collect()
    }

    /// Convs whose output reaches the block output without passing another Conv.
    fn exit_convs(&self) -> BTreeSet<usize> {
        let mut exits = BTreeSet::new();
        for (k, n) in self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op_type == "Conv")
        {
            let mut queue: VecDeque<String> = n.output.iter().cloned().collect();
            let mut seen = HashSet::new();
            while let Some(t) = queue.pop_front() {
                if t == self.output {
                    exits.insert(k);
                    break;
                }
                if !seen.insert(t.clone()) {
                    continue;
                }
                for c in self.consumers(&t) {
                    if self.nodes[c].op_type != "Conv" {
                        queue.extend(self.nodes[c].output.iter().cloned());
                    }
                }
            }
        }
        exits
    }

    /// Nodes reached from `node`'s output before (and including) the next Convs.
    fn downstream(&self, node: usize) -> (Vec<usize>, Vec<usize>) {
        let mut between = Vec::new();
        let mut convs = Vec::new();
        let mut queue: VecDeque<String> = self.nodes[node].output.iter().cloned().collect();
        let mut seen = HashSet::new();
        while let Some(t) = queue.pop_front() {
            if !seen.insert(t.clone()) {
                continue;
            }
            for c in self.consumers(&t) {
                if self.nodes[c].op_type == "Conv" {
                    if !convs.contains(&c) {
                        convs.push(c);
                    }
                } else if !between.contains(&c) {
                    between.push(c);
                    queue.extend(self.nodes[c].output.iter().cloned());
                }
            }
        }
        (between, convs)
    }

    fn set_init(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        self.inits
            .insert(name.to_string(), make_f32(name, dims, data));
    }

    fn finish(self, id: BranchId, source_block: usize, reinitialised: Vec<String>) -> BuiltBranch {
        let mut initializers: Vec<TensorProto> = self.inits.into_values().collect();
        initializers.sort_by(|a, b| a.name.cmp(&b.name));
        BuiltBranch {
            id,
            output: self.output,
            nodes: self.nodes,
            initializers,
            source_block,
            reinitialised,
        }
    }
}

fn ints_attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.as_slice())
}

fn set_ints_attr(n: &mut NodeProto, name: &str, v: Vec<i64>) {
    if let Some(a) = n.attribute.iter_mut().find(|a| a.name == name) {
        a.ints = v;
    } else {
        n.attribute.push(AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v,
            ..Default::default()
        });
    }
}

fn group(n: &NodeProto) -> i64 {
    n.attribute
        .iter()
        .find(|a| a.name == "group")
        .map(|a| a.i)
        .unwrap_or(1)
}

/// Slice axis 0 (or 1) of a float initializer to `keep`.
fn slice_axis(t: &TensorProto, axis: usize, keep: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
    let d = dims(t);
    let data = read_f32(t)?;
    let outer: usize = d[..axis].iter().product();
    let inner: usize = d[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let start = (o * d[axis] + k) * inner;
            out.extend_from_slice(&data[start..start + inner]);
        }
    }
    let mut nd = d.clone();
    nd[axis] = keep.len();
    Ok((nd, out))
}

/// Build the shrink branch of `block` at `ratio` (0 < ratio < 1).
pub fn build_shrink(oracle: &Oracle, block: usize, ratio: f64) -> Result<BuiltBranch> {
    let id = BranchId::shrink(block, ratio).map_err(|e| Error::Graph(e.0))?;
    let out = branch_tensor(&id);
    let input = oracle.layout.cuts[block].clone();
    let mut copy = BlockCopy::new(oracle, block, &input, &out, &out)?;
    let exits = copy.exit_convs();
    let hidden: Vec<usize> = (0..copy.nodes.len())
        .filter(|&k| {
            copy.nodes[k].op_type == "Conv" && !exits.contains(&k) && group(&copy.nodes[k]) == 1
        })
        .collect();
    if hidden.is_empty() {
        return Err(Error::Graph(format!(
            "block {block} has no hidden convolution channels to prune"
        )));
    }
    for h in hidden {
        let w = copy.weight(h, 1).ok_or_else(|| {
            Error::Graph(format!(
                "conv `{}` has no weight initializer",
                copy.nodes[h].name
            ))
        })?;
        let wd = dims(w);
        let data = read_f32(w)?;
        let per = data.len() / wd[0];
        let mut norms: Vec<(f32, usize)> = (0..wd[0])
            .map(|c| {
                (
                    data[c * per..(c + 1) * per].iter().map(|x| x.abs()).sum(),
                    c,
                )
            })
            .collect();
        norms.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let n_keep = ((wd[0] as f64 * ratio).round() as usize).clamp(1, wd[0]);
        let mut keep: Vec<usize> = norms[..n_keep].iter().map(|x| x.1).collect();
        keep.sort_unstable();
        let wname = copy.nodes[h].input[1].clone();
        let (nd, nv) = slice_axis(w, 0, &keep)?;
        copy.set_init(&wname, &nd, &nv);
        if let Some(b) = copy.weight(h, 2).cloned() {
            let (nd, nv) = slice_axis(&b, 0, &keep)?;
            copy.set_init(&copy.nodes[h].input[2].clone(), &nd, &nv);
        }
        let (between, convs) = copy.downstream(h);
        for n in between {
            let node = copy.nodes[n].clone();
            match node.op_type.as_str() {
                "BatchNormalization" => {
                    for k in 1..5 {
                        if let Some(t) = copy.weight(n, k).cloned() {
                            let (nd, nv) = slice_axis(&t, 0, &keep)?;
                            copy.set_init(&node.input[k], &nd, &nv);
                        }
                    }
                }
                op if crate::graph::ELEMENTWISE_UNARY.contains(&op)
                    && copy.data_inputs(n).len() == 1 => {}
                op => {
                    return Err(Error::Graph(format!(
                        "cannot prune the output of `{}` through `{}` ({op})",
                        copy.nodes[h].name, node.name
                    )))
                }
            }
        }
        for c in convs {
            if group(&copy.nodes[c]) != 1 {
                return Err(Error::Graph(format!(
                    "cannot prune into grouped conv `{}`",
                    copy.nodes[c].name
                )));
            }
            let wn = copy.nodes[c].input[1].clone();
            let t = copy.inits.get(&wn).cloned().ok_or_else(|| {
                Error::Graph(format!("conv `{}` has no weight", copy.nodes[c].name))
            })?;
            let (nd, nv) = slice_axis(&t, 1, &keep)?;
            copy.set_init(&wn, &nd, &nv);
        }
    }
    Ok(copy.finish(id, block, vec![]))
}

/// Build the merge branch from cut `from` over `span` blocks.
pub fn build_merge(
    oracle: &Oracle,
    from: usize,
    span: usize,
    source: MergeSource,
    seed: u64,
) -> Result<BuiltBranch> {
    let n = oracle.layout.num_blocks();
    if span < 2 || from + span > n {
        return Err(Error::Graph(format!(
            "merge from cut {from} over {span} blocks does not fit {n} blocks"
        )));
    }
    let id = BranchId::Merge { from, span };
    let out = branch_tensor(&id);
    let shape = |c: usize| {
        oracle
            .facts
            .get(&oracle.layout.cuts[c])
            .map(|f| f.shape.clone())
    };
    let (s_in, s_out) = (shape(from)?, shape(from + span)?);
    let fits = |b: usize| -> Result<bool> { Ok(shape(b)? == s_in && shape(b + 1)? == s_out) };
    let chosen = if fits(from)? {
        Some(from)
    } else if source == MergeSource::Best {
        (from..from + span)
            .map(|b| fits(b).map(|ok| ok.then_some(b)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .next()
    } else {
        None
    };
    let input = oracle.layout.cuts[from].clone();
    if let Some(b) = chosen {
        let copy = BlockCopy::new(oracle, b, &input, &out, &out)?;
        return Ok(copy.finish(id, b, vec![]));
    }
    // Fold the span into a copy of its first block.
    let mut copy = BlockCopy::new(oracle, from, &input, &out, &out)?;
    let own_out = shape(from + 1)?;
    let mut rng = SplitMix(seed ^ ((from as u64) << 8) ^ span as u64);
    let mut reinit = Vec::new();
    if s_in.len() != 4 || own_out.len() != 4 || s_out.len() != 4 {
        return Err(Error::Graph(format!(
            "merge {id}: only NCHW feature maps can be folded"
        )));
    }
    let extra = own_out[2] / s_out[2].max(1);
    if extra == 0 || own_out[2] != s_out[2] * extra || own_out[3] != s_out[3] * extra {
        return Err(Error::Graph(format!(
            "merge {id}: cannot fold resolution {}x{} into {}x{}",
            own_out[2], own_out[3], s_out[2], s_out[3]
        )));
    }
    if extra > 1 {
        for k in copy.consumers(&input) {
            if copy.nodes[k].op_type == "Conv" {
                let strides: Vec<i64> = ints_attr(&copy.nodes[k], "strides")
                    .map(|s| s.to_vec())
                    .unwrap_or(vec![1, 1]);
                set_ints_attr(
                    &mut copy.nodes[k],
                    "strides",
                    strides.iter().map(|s| s * extra as i64).collect(),
                );
            }
        }
    }
    let (c_new, c_old) = (s_out[1], own_out[1]);
    if c_new != c_old {
        for k in copy.exit_convs() {
            let name = copy.nodes[k].name.clone();
            let w = copy
                .weight(k, 1)
                .cloned()
                .ok_or_else(|| Error::Graph(format!("conv `{name}` has no weight")))?;
            let mut wd = dims(&w);
            wd[0] = c_new;
            let g = group(&copy.nodes[k]);
            if g != 1 {
                return Err(Error::Graph(format!(
                    "merge {id}: cannot widen grouped conv `{name}`"
                )));
            }
            let wn = copy.nodes[k].input[1].clone();
            let data = kaiming_uniform(&wd, &mut rng);
            copy.set_init(&wn, &wd, &data);
            if copy.nodes[k].input.len() > 2 && !copy.nodes[k].input[2].is_empty() {
                let bn = copy.nodes[k].input[2].clone();
                copy.set_init(&bn, &[c_new], &vec![0.0; c_new]);
            }
            let (between, _) = copy.downstream(k);
            for b in between {
                if copy.nodes[b].op_type == "BatchNormalization" {
                    let node = copy.nodes[b].clone();
                    for (i, v) in [(1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)] {
                        copy.set_init(&node.input[i], &[c_new], &vec![v; c_new]);
                    }
                    reinit.push(node.name.clone());
                }
            }
            reinit.push(name);
        }
    }
    // An identity shortcut whose shape no longer fits gets a 1x1 projection,
    // initialised as the identity on the channels both sides have.
    let stride = s_in[2] / s_out[2].max(1);
    let merges: Vec<usize> = copy
        .consumers(&input)
        .into_iter()
        .filter(|&k| matches!(copy.nodes[k].op_type.as_str(), "Add" | "Sum"))
        .collect();
    for k in merges.into_iter().rev() {
        if stride > 1 || s_in[1] != c_new {
            let proj = format!("{out}/shortcut_projection");
            let wname = format!("{proj}/weight");
            let mut w = vec![0.0f32; c_new * s_in[1]];
            for c in 0..c_new.min(s_in[1]) {
                w[c * s_in[1] + c] = 1.0;
            }
            copy.set_init(&wname, &[c_new, s_in[1], 1, 1], &w);
            let node = NodeProto {
                name: proj.clone(),
                op_type: "Conv".into(),
                input: vec![input.clone(), wname],
                output: vec![proj.clone()],
                attribute: vec![
                    AttributeProto {
                        name: "kernel_shape".into(),
                        r#type: AttributeType::Ints as i32,
                        ints: vec![1, 1],
                        ..Default::default()
                    },
                    AttributeProto {
                        name: "strides".into(),
                        r#type: AttributeType::Ints as i32,
                        ints: vec![stride as i64; 2],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            };
            for i in copy.nodes[k].input.iter_mut().filter(|i| **i == input) {
                *i = proj.clone();
            }
            copy.nodes.insert(k, node);
            reinit.push(proj);
        }
    }
    Ok(copy.finish(id, from, reinit))
}
