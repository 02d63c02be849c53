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
//!   The kept channels are followed through every op between the pruned conv
//!   and the convs that read it: element-wise activations (Relu, Clip,
//!   LeakyRelu, HardSigmoid, HardSwish, Sigmoid, ...), `x * sigmoid(x)` and
//!   other element-wise binaries whose data inputs are all pruned alike,
//!   PRelu and per-channel constants (sliced), BatchNormalization (sliced)
//!   and depthwise convs (sliced, `group` set to the kept count), so an
//!   inverted residual is pruned on its expansion channels through
//!   expand 1x1 -> depthwise -> project 1x1 and keeps its input and output
//!   shapes. Anything else stops the shrink with [`Error::CannotPrune`].
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
    /// For a shrink: the channels each pruned conv kept (empty for merges).
    pub pruned: Vec<PrunedLayer>,
}

/// One conv of a shrink branch whose output channels were pruned. Names are
/// the oracle's node names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedLayer {
    /// The conv whose output channels were pruned.
    pub conv: String,
    /// Its output channels in the oracle.
    pub channels: usize,
    /// The channels kept, ascending.
    pub keep: Vec<usize>,
    /// Depthwise convs the channels pass through (sliced alike).
    pub depthwise: Vec<String>,
    /// Convs that read the pruned channels (their input channels sliced).
    pub readers: Vec<String>,
}

/// The tensor a branch writes.
pub fn branch_tensor(id: &BranchId) -> String {
    format!("branch/{id}")
}

/// A copy of one block under a prefix, with its input rewired.
struct BlockCopy {
    nodes: Vec<NodeProto>,
    /// The oracle name of each node.
    oracle_names: Vec<String>,
    inits: HashMap<String, TensorProto>,
    /// Initializers and outputs of nodes that read only constants.
    constant: HashSet<String>,
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
        let mut oracle_names = Vec::new();
        for &i in &ids {
            let mut n = graph.node[i].clone();
            oracle_names.push(if n.name.is_empty() {
                n.output.first().cloned().unwrap_or_default()
            } else {
                n.name.clone()
            });
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
        // `ids` is in topological order, so one pass finds every constant.
        let mut constant: HashSet<String> = inits.keys().cloned().collect();
        for n in &nodes {
            if n.input
                .iter()
                .filter(|i| !i.is_empty())
                .all(|i| constant.contains(i))
            {
                constant.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
            }
        }
        Ok(BlockCopy {
            nodes,
            oracle_names,
            inits,
            constant,
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
        let mut out: Vec<String> = Vec::new();
        for i in self.nodes[node].input.iter() {
            if !i.is_empty() && !self.constant.contains(i) && !out.contains(i) {
                out.push(i.clone());
            }
        }
        out
    }

    /// The value of a constant tensor: an initializer (`None`) or the
    /// `value` of the Constant node at this index.
    fn constant_value(&self, name: &str) -> Option<(Option<usize>, TensorProto)> {
        if let Some(t) = self.inits.get(name) {
            return Some((None, t.clone()));
        }
        let k = self
            .nodes
            .iter()
            .position(|n| n.op_type == "Constant" && n.output.iter().any(|o| o == name))?;
        let t = self.nodes[k]
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.clone())?;
        Some((Some(k), t))
    }

    /// A depthwise conv: one input channel per group and one output channel
    /// per input channel (weight `[group, 1, ...]`).
    fn is_depthwise(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        let g = group(n);
        n.op_type == "Conv"
            && g > 1
            && self
                .weight(node, 1)
                .map(|w| {
                    let d = dims(w);
                    d.len() >= 3 && d[1] == 1 && d[0] as i64 == g
                })
                .unwrap_or(false)
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
                    if self.nodes[c].op_type != "Conv" || self.is_depthwise(c) {
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

    fn finish(
        self,
        id: BranchId,
        source_block: usize,
        reinitialised: Vec<String>,
        pruned: Vec<PrunedLayer>,
    ) -> BuiltBranch {
        let mut initializers: Vec<TensorProto> = self.inits.into_values().collect();
        initializers.sort_by(|a, b| a.name.cmp(&b.name));
        BuiltBranch {
            id,
            output: self.output,
            nodes: self.nodes,
            initializers,
            source_block,
            reinitialised,
            pruned,
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

fn set_int_attr(n: &mut NodeProto, name: &str, v: i64) {
    if let Some(a) = n.attribute.iter_mut().find(|a| a.name == name) {
        a.i = v;
    } else {
        n.attribute.push(AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i: v,
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

/// Slice one axis of a float initializer to the indices `keep`.
fn slice_axis(t: &TensorProto, axis: usize, keep: &[usize]) -> Result<(Vec<usize>, Vec<f32>)> {
    let d = dims(t);
    if axis >= d.len() || keep.iter().any(|&k| k >= d[axis]) {
        return Err(Error::Graph(format!(
            "initializer `{}` with dims {:?} has no channel {} on axis {axis} to keep",
            t.name,
            t.dims,
            keep.iter().max().copied().unwrap_or(0)
        )));
    }
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

/// Build the shrink branch of `block` at `ratio` (0 < ratio < 1, a whole percentage).
pub fn build_shrink(oracle: &Oracle, block: usize, ratio: f64) -> Result<BuiltBranch> {
    let id = BranchId::shrink(block, ratio).map_err(|e| Error::Graph(e.0))?;
    shrink_as(oracle, block, ratio, id)
}

/// A pruned copy of `block` keeping `ratio` (0 < ratio <= 1) of each hidden
/// conv's channels, written to `branch/s{block}@{pct}`. At ratio 1 it keeps
/// every channel: the copy computes exactly what the block computes, which
/// is how the pruning itself is checked. Elastify uses [`build_shrink`].
pub fn build_pruned_copy(oracle: &Oracle, block: usize, ratio: f64) -> Result<BuiltBranch> {
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(Error::Graph(format!(
            "prune ratio {ratio} must be in (0, 1]"
        )));
    }
    let id = BranchId::Shrink {
        block,
        percent: (ratio * 100.0).round() as u32,
    };
    shrink_as(oracle, block, ratio, id)
}

fn shrink_as(oracle: &Oracle, block: usize, ratio: f64, id: BranchId) -> Result<BuiltBranch> {
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
            "shrink {id}: block {block} has no hidden convolution channels to prune \
             (every conv feeds the block output); list block {block} in \
             `branches.skip_blocks` of the elastify spec to build no new branch over it"
        )));
    }
    let mut pruned = Vec::new();
    for h in hidden {
        pruned.push(prune_conv(&mut copy, h, ratio, &id, block)?);
    }
    Ok(copy.finish(id, block, vec![], pruned))
}

/// What pruning one conv's output channels does to each node downstream.
enum Through {
    /// Reads the pruned channels as its input channels: slice weight axis 1.
    Reader,
    /// Depthwise conv: slice weight axis 0 and bias, set `group`.
    Depthwise,
    /// BatchNormalization: its 1-D parameters at these slots are sliced.
    BatchNorm(Vec<usize>),
    /// Element-wise on its data inputs, which must all be pruned alike;
    /// constant inputs at these slots (PRelu's slope, a Mul's scale, ...)
    /// are either one value (kept) or one per channel (sliced).
    Elementwise(Vec<usize>),
}

/// Element-wise ops with one data input that keep channels apart; their
/// other inputs (Clip's min/max, ...) are scalars.
const PASS_UNARY: &[&str] = &[
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Softplus",
    "Mish",
    "Gelu",
    "Identity",
    "Dropout",
    "Neg",
    "Abs",
    "Exp",
    "Sqrt",
];

/// Element-wise binary ops: fine when every data input is pruned alike.
const PASS_BINARY: &[&str] = &["Mul", "Add", "Sub", "Div", "Max", "Min", "Sum"];

/// Prune conv `h` of `copy` to `ratio` of its output channels (largest L1
/// norm first) and follow the kept channels to the convs that read them.
fn prune_conv(
    copy: &mut BlockCopy,
    h: usize,
    ratio: f64,
    id: &BranchId,
    block: usize,
) -> Result<PrunedLayer> {
    let conv_name = copy.oracle_names[h].clone();
    let w = copy
        .weight(h, 1)
        .cloned()
        .ok_or_else(|| Error::Graph(format!("conv `{conv_name}` has no weight initializer")))?;
    let wd = dims(&w);
    if wd.len() < 3 || wd[0] == 0 {
        return Err(Error::Graph(format!(
            "conv `{conv_name}` has weight dims {wd:?}; expected [out, in, k...]"
        )));
    }
    let rank = wd.len();
    let channels = wd[0];
    let data = read_f32(&w)?;
    let per = data.len() / channels;
    let mut norms: Vec<(f32, usize)> = (0..channels)
        .map(|c| {
            (
                data[c * per..(c + 1) * per].iter().map(|x| x.abs()).sum(),
                c,
            )
        })
        .collect();
    norms.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let n_keep = ((channels as f64 * ratio).round() as usize).clamp(1, channels);
    let mut keep: Vec<usize> = norms[..n_keep].iter().map(|x| x.1).collect();
    keep.sort_unstable();

    let cannot = |copy: &BlockCopy, node: usize, reason: String| {
        Error::CannotPrune(Box::new(crate::error::CannotPrune {
            branch: id.to_string(),
            block,
            conv: conv_name.clone(),
            node: copy.oracle_names[node].clone(),
            op: copy.nodes[node].op_type.clone(),
            reason,
        }))
    };

    // Walk the tensors that carry the pruned channels; decide for each node.
    let mut pruned_tensors: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    for o in copy.nodes[h].output.iter().filter(|o| !o.is_empty()) {
        pruned_tensors.insert(o.clone());
        queue.push_back(o.clone());
    }
    let mut plan: Vec<(usize, Through)> = Vec::new();
    while let Some(t) = queue.pop_front() {
        if t == copy.output {
            return Err(cannot(
                copy,
                h,
                "the pruned channels reach the block output".into(),
            ));
        }
        for c in copy.consumers(&t) {
            if plan.iter().any(|(k, _)| *k == c) {
                continue;
            }
            let node = &copy.nodes[c];
            let slots = |from: usize| -> Vec<usize> {
                (from..node.input.len())
                    .filter(|&k| !node.input[k].is_empty())
                    .collect()
            };
            let through = match node.op_type.as_str() {
                "Conv" if copy.is_depthwise(c) => {
                    if node.input[0] != t {
                        return Err(cannot(copy, c, "it reads them as a weight".into()));
                    }
                    Through::Depthwise
                }
                "Conv" if group(node) == 1 => {
                    if node.input[0] != t {
                        return Err(cannot(copy, c, "it reads them as a weight".into()));
                    }
                    plan.push((c, Through::Reader));
                    continue;
                }
                "Conv" => {
                    return Err(cannot(
                        copy,
                        c,
                        format!(
                            "a grouped conv (group {}) that is not depthwise",
                            group(node)
                        ),
                    ))
                }
                "BatchNormalization" => Through::BatchNorm(slots(1)),
                op if PASS_UNARY.contains(&op) => {
                    if copy.data_inputs(c).len() != 1 {
                        return Err(cannot(copy, c, "it has more than one data input".into()));
                    }
                    Through::Elementwise(vec![])
                }
                op if PASS_BINARY.contains(&op) || op == "PRelu" => Through::Elementwise(
                    (0..node.input.len())
                        .filter(|&k| {
                            !node.input[k].is_empty() && copy.constant.contains(&node.input[k])
                        })
                        .collect(),
                ),
                _ => {
                    return Err(cannot(
                        copy,
                        c,
                        "only element-wise ops, BatchNormalization, PRelu and depthwise \
                         convs can carry pruned channels"
                            .into(),
                    ))
                }
            };
            // Only the first output carries the channels (BN and Dropout
            // have optional training outputs).
            if let Some(o) = copy.nodes[c].output.first().filter(|o| !o.is_empty()) {
                if pruned_tensors.insert(o.clone()) {
                    queue.push_back(o.clone());
                }
            }
            plan.push((c, through));
        }
    }
    // Element-wise nodes may only mix tensors pruned alike (x * sigmoid(x)
    // is fine, an Add with the block input is not).
    for (c, through) in &plan {
        if matches!(through, Through::Elementwise(_) | Through::BatchNorm(_)) {
            if let Some(other) = copy
                .data_inputs(*c)
                .into_iter()
                .find(|i| !pruned_tensors.contains(i))
            {
                let other = other
                    .strip_prefix(&format!("{}/", copy.output))
                    .unwrap_or(&other)
                    .to_string();
                return Err(cannot(
                    copy,
                    *c,
                    format!("its input `{other}` does not carry the same pruned channels"),
                ));
            }
        }
    }

    // Apply.
    let wname = copy.nodes[h].input[1].clone();
    let (nd, nv) = slice_axis(&w, 0, &keep)?;
    copy.set_init(&wname, &nd, &nv);
    if let Some(b) = copy.weight(h, 2).cloned() {
        let (nd, nv) = slice_axis(&b, 0, &keep)?;
        copy.set_init(&copy.nodes[h].input[2].clone(), &nd, &nv);
    }
    let mut depthwise = Vec::new();
    let mut readers = Vec::new();
    // Constants shared by several nodes are sliced once.
    let mut sliced: HashSet<String> = HashSet::new();
    for (c, through) in plan {
        match through {
            Through::Reader => {
                let wn = copy.nodes[c].input[1].clone();
                let t = copy.inits.get(&wn).cloned().ok_or_else(|| {
                    Error::Graph(format!("conv `{}` has no weight", copy.oracle_names[c]))
                })?;
                let (nd, nv) = slice_axis(&t, 1, &keep)?;
                copy.set_init(&wn, &nd, &nv);
                readers.push(copy.oracle_names[c].clone());
            }
            Through::Depthwise => {
                for k in 1..copy.nodes[c].input.len().min(3) {
                    if let Some(t) = copy.weight(c, k).cloned() {
                        let (nd, nv) = slice_axis(&t, 0, &keep)?;
                        copy.set_init(&copy.nodes[c].input[k].clone(), &nd, &nv);
                    }
                }
                set_int_attr(&mut copy.nodes[c], "group", keep.len() as i64);
                depthwise.push(copy.oracle_names[c].clone());
            }
            Through::BatchNorm(slots) => {
                for k in slots {
                    let name = copy.nodes[c].input[k].clone();
                    if !sliced.insert(name.clone()) {
                        continue;
                    }
                    let t = copy.inits.get(&name).cloned().ok_or_else(|| {
                        cannot(
                            copy,
                            c,
                            format!("its parameter `{name}` is not an initializer"),
                        )
                    })?;
                    let (nd, nv) = slice_axis(&t, 0, &keep)?;
                    copy.set_init(&name, &nd, &nv);
                }
            }
            Through::Elementwise(slots) => {
                for k in slots {
                    let name = copy.nodes[c].input[k].clone();
                    if !sliced.insert(name.clone()) {
                        continue;
                    }
                    let Some((from_node, t)) = copy.constant_value(&name) else {
                        return Err(cannot(
                            copy,
                            c,
                            format!("its constant input `{name}` is computed, not stored"),
                        ));
                    };
                    match channel_axis(&t, rank, channels) {
                        ChannelAxis::Broadcast => {}
                        ChannelAxis::Axis(a) => {
                            let (nd, nv) = slice_axis(&t, a, &keep)?;
                            match from_node {
                                None => copy.set_init(&name, &nd, &nv),
                                Some(k) => {
                                    let value = make_f32(&t.name, &nd, &nv);
                                    if let Some(attr) = copy.nodes[k]
                                        .attribute
                                        .iter_mut()
                                        .find(|a| a.name == "value")
                                    {
                                        attr.t = Some(value);
                                    }
                                }
                            }
                        }
                        ChannelAxis::Other => {
                            return Err(cannot(
                                copy,
                                c,
                                format!(
                                    "its constant input has dims {:?}, neither one value \
                                     nor one per channel",
                                    t.dims
                                ),
                            ))
                        }
                    }
                }
            }
        }
    }
    Ok(PrunedLayer {
        conv: conv_name,
        channels,
        keep,
        depthwise,
        readers,
    })
}

/// How a constant operand lines up with the channel axis (axis 1) of a
/// rank-`rank` NCHW tensor with `channels` channels.
enum ChannelAxis {
    /// One value for every channel (all dims 1): keep it.
    Broadcast,
    /// One value per channel along this axis of the constant: slice it.
    Axis(usize),
    /// Anything else.
    Other,
}

fn channel_axis(t: &TensorProto, rank: usize, channels: usize) -> ChannelAxis {
    let d = dims(t);
    if d.iter().all(|&x| x == 1) {
        return ChannelAxis::Broadcast;
    }
    // Numpy broadcasting aligns trailing dims: the channel axis 1 of the data
    // is axis `len - (rank - 1)` of the constant.
    if d.len() + 1 >= rank {
        let a = d.len() + 1 - rank;
        if d[a] == channels && d.iter().enumerate().all(|(i, &x)| i == a || x == 1) {
            return ChannelAxis::Axis(a);
        }
    }
    ChannelAxis::Other
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
        return Ok(copy.finish(id, b, vec![], vec![]));
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
    Ok(copy.finish(id, from, reinit, vec![]))
}
