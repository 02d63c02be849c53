//! A differentiable interpreter of ONNX CNN graphs on candle.
//!
//! The cloud side trains branches by running parts of the oracle (or of a
//! supernet) forward and backward. [`Interpreter`] holds one model: its
//! initializers become candle tensors, constant subgraphs are evaluated once
//! at load, and a chosen set of initializers become trainable
//! [`candle_core::Var`]s (everything else is frozen, so gradients never touch
//! the originals). [`Interpreter::forward`] evaluates only the nodes needed to
//! compute the wanted tensors from the fed ones, so a cut tensor c_i can be
//! fed to get c_j or a branch output. [`Interpreter::export`] gives the
//! trained values back as ONNX initializers.

pub mod activation;
pub mod conv_grad;
pub mod cpu;
pub mod depthwise;
pub mod expand_dw;
pub mod gemm_conv;
pub mod geom;
pub mod ops;
pub mod params;
pub mod value;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use adaptivenet_onnx::tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};
use adaptivenet_onnx::GraphIndex;
use candle_core::{Device, Tensor, Var};

pub use value::Value;

/// Errors of the interpreter.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    #[error("op `{op}` (node {node}) is not supported by the training interpreter")]
    Unsupported { op: String, node: String },
    #[error("node {node} ({op}): {msg}")]
    Node {
        op: String,
        node: String,
        msg: String,
    },
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("trainable parameter `{name}`: {msg}")]
    Trainable { name: String, msg: String },
    #[error("tensor `{name}` is needed but it was not fed and cannot be computed from the fed tensors ({fed})")]
    NotFed { name: String, fed: String },
    #[error("{0}")]
    Graph(#[from] adaptivenet_onnx::Error),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, InterpError>;

/// A readable name for node `ix`: its name, or its first output.
fn node_label(node: &NodeProto, ix: usize) -> String {
    if !node.name.is_empty() {
        format!("`{}`", node.name)
    } else {
        format!(
            "#{ix} (output `{}`)",
            node.output.first().map(String::as_str).unwrap_or("")
        )
    }
}

/// A Relu/Clip node fused into the node before it, and its bounds.
type FusedClamp = (usize, activation::Clamp);

/// What a node's evaluation takes over from the nodes after it.
#[derive(Default)]
struct Fused {
    /// A following Relu/Clip.
    activation: Option<activation::Clamp>,
    /// The other input of a following residual Add (Conv only).
    residual: Option<Value>,
    /// A following depthwise Conv (1x1 Conv only).
    depthwise: Option<FusedDepthwise>,
}

/// A depthwise Conv node fused after a 1x1 Conv (and its Relu/Clip).
struct FusedDepthwise {
    /// The depthwise Conv node.
    node: usize,
    weight: Value,
    bias: Option<Value>,
    /// Its following Relu/Clip.
    activation: Option<activation::Clamp>,
}

/// The nodes a 1x1 Conv takes over in an expansion + depthwise fusion.
struct ExpandDepthwise {
    /// The 1x1's Relu/Clip.
    act1: Option<FusedClamp>,
    /// The depthwise Conv node.
    depthwise: usize,
    /// The depthwise's Relu/Clip.
    act2: Option<FusedClamp>,
}

/// An ONNX model ready to run forward and backward on candle.
pub struct Interpreter {
    /// The model's nodes, inputs and outputs (initializers stripped: their
    /// values live in `consts` and `vars`).
    graph: GraphProto,
    index: GraphIndex,
    opset: i64,
    device: Device,
    /// Frozen initializers and the outputs of constant nodes folded at load.
    consts: HashMap<String, Value>,
    /// Trainable initializers in initializer order, with their dims.
    vars: Vec<(String, Var)>,
    var_index: HashMap<String, usize>,
    /// Trainable initializers that are BatchNormalization running
    /// statistics (its mean and variance inputs): kept out of the optimiser.
    statistics: HashSet<String>,
    /// Nodes evaluated at load (their outputs are in `consts`).
    folded: Vec<bool>,
    /// Whether a 1x1 Conv and the depthwise Conv after it run as one op
    /// (`expand_dw`); tests turn it off to compare with the unfused path.
    pub(crate) fuse_expand_depthwise: bool,
    /// How many expansion + depthwise fusions `forward` has run.
    pub(crate) expand_depthwise_runs: AtomicUsize,
}

impl std::fmt::Debug for Interpreter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interpreter")
            .field("nodes", &self.graph.node.len())
            .field("consts", &self.consts.len())
            .field(
                "trainable",
                &self
                    .vars
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Interpreter {
    /// Load `model` on `device`; the initializers named in `trainable`
    /// become variables (each must be a float initializer).
    pub fn new(
        model: &ModelProto,
        trainable: &HashSet<String>,
        device: &Device,
    ) -> Result<Interpreter> {
        let full = model.graph.as_ref().ok_or_else(|| {
            InterpError::Graph(adaptivenet_onnx::Error::Graph("model has no graph".into()))
        })?;
        let index = GraphIndex::new(full)?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(13);

        let init_names: HashSet<&str> = full.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut missing: Vec<&String> = trainable
            .iter()
            .filter(|n| !init_names.contains(n.as_str()))
            .collect();
        missing.sort();
        if let Some(name) = missing.first() {
            return Err(InterpError::Trainable {
                name: name.to_string(),
                msg: "the model has no initializer of that name".into(),
            });
        }

        let mut consts = HashMap::new();
        let mut vars = Vec::new();
        for t in &full.initializer {
            let v = params::tensor_from_proto(t, device)?;
            if trainable.contains(&t.name) {
                match v {
                    Value::Float(x) => vars.push((t.name.clone(), Var::from_tensor(&x)?)),
                    Value::Int(_) => {
                        return Err(InterpError::Trainable {
                            name: t.name.clone(),
                            msg: "not a float tensor".into(),
                        })
                    }
                }
            } else {
                consts.insert(t.name.clone(), v);
            }
        }
        let var_index: HashMap<String, usize> = vars
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();

        let statistics = full
            .node
            .iter()
            .filter(|n| n.op_type == "BatchNormalization")
            .flat_map(|n| n.input.iter().skip(3).take(2))
            .filter(|name| var_index.contains_key(name.as_str()))
            .cloned()
            .collect();

        let graph = GraphProto {
            node: full.node.clone(),
            input: full.input.clone(),
            output: full.output.clone(),
            name: full.name.clone(),
            ..Default::default()
        };
        let mut interp = Interpreter {
            graph,
            index,
            opset,
            device: device.clone(),
            consts,
            vars,
            var_index,
            statistics,
            folded: Vec::new(),
            fuse_expand_depthwise: true,
            expand_depthwise_runs: AtomicUsize::new(0),
        };
        interp.fold_constants();
        Ok(interp)
    }

    /// Evaluate once the nodes that read only frozen constants. A node that
    /// fails here is left for `forward`, which reports the error if the node
    /// is ever needed.
    fn fold_constants(&mut self) {
        let n = self.graph.node.len();
        let mut folded = vec![false; n];
        for &ix in &self.index.order {
            if !self.index.const_node[ix] {
                continue;
            }
            let node = &self.graph.node[ix];
            let out_names = node.output.clone();
            let inputs: Option<Vec<Option<Value>>> = node
                .input
                .iter()
                .map(|i| {
                    if i.is_empty() {
                        Some(None)
                    } else {
                        self.consts.get(i).map(|v| Some(v.clone()))
                    }
                })
                .collect();
            let Some(inputs) = inputs else { continue };
            let all = node.output.iter().map(|o| !o.is_empty()).collect();
            if let Ok(outs) = self.run_node(ix, inputs, all, Fused::default()) {
                for (name, v) in out_names.into_iter().zip(outs) {
                    if !name.is_empty() {
                        self.consts.insert(name, v);
                    }
                }
                folded[ix] = true;
            }
        }
        self.folded = folded;
    }

    /// Run node `ix` on its inputs.
    fn run_node(
        &self,
        ix: usize,
        inputs: Vec<Option<Value>>,
        outputs_needed: Vec<bool>,
        fused: Fused,
    ) -> Result<Vec<Value>> {
        let node = &self.graph.node[ix];
        let ctx = ops::Ctx {
            node,
            inputs,
            device: &self.device,
            opset: self.opset,
            outputs_needed: outputs_needed.clone(),
            activation: fused.activation,
            residual: fused.residual,
            depthwise: fused.depthwise.map(|d| ops::DepthwiseStage {
                node: &self.graph.node[d.node],
                weight: d.weight,
                bias: d.bias,
                activation: d.activation,
            }),
        };
        let op = if node.domain.is_empty() {
            node.op_type.clone()
        } else {
            format!("{}::{}", node.domain, node.op_type)
        };
        let outs = ops::eval(&ctx).map_err(|e| match e {
            ops::OpError::Unsupported => InterpError::Unsupported {
                op: op.clone(),
                node: node_label(node, ix),
            },
            ops::OpError::Msg(msg) => InterpError::Node {
                op: op.clone(),
                node: node_label(node, ix),
                msg,
            },
            ops::OpError::Candle(e) => InterpError::Node {
                op: op.clone(),
                node: node_label(node, ix),
                msg: e.to_string(),
            },
        })?;
        let needed = outputs_needed
            .iter()
            .rposition(|&n| n)
            .map(|p| p + 1)
            .unwrap_or(0);
        if outs.len() < needed {
            return Err(InterpError::Node {
                op,
                node: node_label(node, ix),
                msg: format!(
                    "only {} of its {} outputs are supported",
                    outs.len(),
                    needed
                ),
            });
        }
        Ok(outs)
    }

    /// The Relu or Clip node `next` if Conv or Add node `ix` can do its
    /// work: `ix`'s output is read by `next` only, is not wanted itself, and
    /// `next`'s bounds are constants. Returns the node and its bounds.
    fn fusable_activation(
        &self,
        ix: usize,
        next: Option<usize>,
        uses: &HashMap<&str, usize>,
        keep: &HashSet<&str>,
    ) -> Option<(usize, activation::Clamp)> {
        let default_domain = |d: &str| d.is_empty() || d == "ai.onnx";
        let node = &self.graph.node[ix];
        let jx = next?;
        let act = &self.graph.node[jx];
        let out = match node.output.as_slice() {
            [o] if !o.is_empty() => o.as_str(),
            _ => return None,
        };
        if !matches!(node.op_type.as_str(), "Conv" | "Add")
            || !default_domain(&node.domain)
            || !matches!(act.op_type.as_str(), "Relu" | "Clip")
            || !default_domain(&act.domain)
            || act.input.first().map(String::as_str) != Some(out)
            || uses.get(out) != Some(&1)
            || keep.contains(out)
        {
            return None;
        }
        // the bounds (inputs 1 and 2 of Clip) must be stored constants
        let mut inputs = vec![None];
        for name in &act.input[1..] {
            inputs.push(if name.is_empty() {
                None
            } else {
                Some(self.stored(name)?)
            });
        }
        let ctx = ops::Ctx {
            node: act,
            inputs,
            device: &self.device,
            opset: self.opset,
            outputs_needed: vec![true],
            activation: None,
            residual: None,
            depthwise: None,
        };
        ops::clamp_bounds(&ctx).ok().flatten().map(|b| (jx, b))
    }

    /// The Add node `next` (and the Relu/Clip after it, if fusable) if
    /// Conv node `ix` can take it over as a residual input: a CPU conv with
    /// `group` 1 whose output is read by `next` only and not wanted, and
    /// whose Add's other input is already available. Returns the Add, its
    /// other input and the activation fusion of the Add.
    fn fusable_residual<'g>(
        &'g self,
        ix: usize,
        next: Option<usize>,
        after: Option<usize>,
        uses: &HashMap<&str, usize>,
        keep: &HashSet<&str>,
        available: impl Fn(&str) -> bool,
    ) -> Option<(usize, &'g str, Option<FusedClamp>)> {
        let default_domain = |d: &str| d.is_empty() || d == "ai.onnx";
        let node = &self.graph.node[ix];
        let jx = next?;
        let add = &self.graph.node[jx];
        let out = match node.output.as_slice() {
            [o] if !o.is_empty() => o.as_str(),
            _ => return None,
        };
        let group = node
            .attribute
            .iter()
            .find(|a| a.name == "group")
            .map_or(1, |a| a.i);
        if !self.device.is_cpu()
            || node.op_type != "Conv"
            || !default_domain(&node.domain)
            || group != 1
            || add.op_type != "Add"
            || !default_domain(&add.domain)
            || add.input.len() != 2
            || add.output.len() != 1
            || uses.get(out) != Some(&1)
            || keep.contains(out)
        {
            return None;
        }
        let other = match (add.input[0].as_str(), add.input[1].as_str()) {
            (a, b) if a == out && b != out => b,
            (a, b) if b == out && a != out => a,
            _ => return None,
        };
        if other.is_empty() || !available(other) {
            return None;
        }
        Some((jx, other, self.fusable_activation(jx, after, uses, keep)))
    }

    /// The Relu/Clip, depthwise Conv and Relu/Clip that Conv node
    /// `nodes[pos]` can take over as one expansion + depthwise op
    /// (`expand_dw`): on the CPU, a `group` 1 Conv with a stored 1x1
    /// weight, stride 1, dilation 1 and no padding, then optionally a
    /// Relu/Clip with constant bounds, then a Conv whose `group` equals
    /// its input and output channels (stored weight and bias), then
    /// optionally a Relu/Clip; each intermediate tensor read by the next
    /// node only and not wanted.
    fn fusable_expand_depthwise(
        &self,
        nodes: &[usize],
        pos: usize,
        uses: &HashMap<&str, usize>,
        keep: &HashSet<&str>,
    ) -> Option<ExpandDepthwise> {
        let default_domain = |d: &str| d.is_empty() || d == "ai.onnx";
        let attr = |n: &NodeProto, name: &str| n.attribute.iter().find(|a| a.name == name).cloned();
        let all = |n: &NodeProto, name: &str, v: i64| {
            attr(n, name).is_none_or(|a| a.ints.iter().all(|&x| x == v))
        };
        let float_dims = |name: &str| match self.stored(name)? {
            Value::Float(t) => Some(t.dims().to_vec()),
            Value::Int(_) => None,
        };
        let single_output = |n: &NodeProto| match n.output.as_slice() {
            [o] if !o.is_empty() => Some(o.clone()),
            _ => None,
        };
        let ix = *nodes.get(pos)?;
        let node = &self.graph.node[ix];
        if !self.fuse_expand_depthwise
            || !self.device.is_cpu()
            || node.op_type != "Conv"
            || !default_domain(&node.domain)
            || attr(node, "group").is_some_and(|a| a.i != 1)
            || !all(node, "strides", 1)
            || !all(node, "dilations", 1)
            || !all(node, "pads", 0)
            || !all(node, "kernel_shape", 1)
            || attr(node, "auto_pad")
                .is_some_and(|a| !matches!(a.s.as_slice(), b"" | b"NOTSET" | b"VALID"))
        {
            return None;
        }
        single_output(node)?;
        let w1 = float_dims(node.input.get(1)?)?;
        let &[e, _, 1, 1] = w1.as_slice() else {
            return None;
        };
        let act1 = self.fusable_activation(ix, nodes.get(pos + 1).copied(), uses, keep);
        let mid_node = act1.map_or(ix, |(jx, _)| jx);
        let mid = single_output(&self.graph.node[mid_node])?;
        let dpos = pos + 1 + usize::from(act1.is_some());
        let dx = *nodes.get(dpos)?;
        let dw = &self.graph.node[dx];
        if dw.op_type != "Conv"
            || !default_domain(&dw.domain)
            || dw.input.first() != Some(&mid)
            || uses.get(mid.as_str()) != Some(&1)
            || keep.contains(mid.as_str())
            || attr(dw, "group").map_or(1, |a| a.i) != e as i64
        {
            return None;
        }
        single_output(dw)?;
        let wd = float_dims(dw.input.get(1)?)?;
        if !matches!(wd.as_slice(), &[o, 1, _, _] if o == e) {
            return None;
        }
        if let Some(b) = dw.input.get(2).filter(|b| !b.is_empty()) {
            if float_dims(b)?.iter().product::<usize>() != e {
                return None;
            }
        }
        let act2 = self.fusable_activation(dx, nodes.get(dpos + 1).copied(), uses, keep);
        Some(ExpandDepthwise {
            act1,
            depthwise: dx,
            act2,
        })
    }

    /// A constant or parameter value by name.
    fn stored(&self, name: &str) -> Option<Value> {
        if let Some(&i) = self.var_index.get(name) {
            return Some(Value::Float(self.vars[i].1.as_tensor().clone()));
        }
        self.consts.get(name).cloned()
    }

    /// Indices (topological order) of the nodes to evaluate to get `wanted`
    /// from the fed tensors.
    fn needed_nodes(&self, fed: &HashSet<&str>, wanted: &[&str]) -> Result<Vec<usize>> {
        let nodes = if fed.len() == 1 {
            let from = fed.iter().next().copied().unwrap_or_default();
            self.index.nodes_between(&self.graph, from, wanted)?
        } else {
            let mut stack: Vec<&str> = wanted.to_vec();
            let mut seen: HashSet<&str> = HashSet::new();
            let mut nodes: HashSet<usize> = HashSet::new();
            while let Some(t) = stack.pop() {
                if fed.contains(t) || !seen.insert(t) || self.stored(t).is_some() {
                    continue;
                }
                match self.index.producer.get(t) {
                    Some(&p) => {
                        if nodes.insert(p) {
                            stack.extend(
                                self.graph.node[p]
                                    .input
                                    .iter()
                                    .filter(|i| !i.is_empty())
                                    .map(String::as_str),
                            );
                        }
                    }
                    None => {
                        let mut fed: Vec<&str> = fed.iter().copied().collect();
                        fed.sort_unstable();
                        return Err(InterpError::NotFed {
                            name: t.to_string(),
                            fed: fed.join(", "),
                        });
                    }
                }
            }
            let mut nodes: Vec<usize> = nodes.into_iter().collect();
            nodes.sort_by_key(|&n| self.index.position[n]);
            nodes
        };
        Ok(nodes.into_iter().filter(|&n| !self.folded[n]).collect())
    }

    /// Evaluate the tensors `wanted` from the tensors in `feeds` (a graph
    /// input, or any tensor of the graph such as a cut). Only the nodes on
    /// the way are run. Float feeds are used as f32; integer feeds as shapes
    /// or indices.
    pub fn forward(&self, feeds: &[(&str, Tensor)], wanted: &[&str]) -> Result<Vec<Tensor>> {
        let mut values: HashMap<&str, Value> = HashMap::new();
        for (name, t) in feeds {
            let known = self.index.producer.contains_key(*name)
                || self.index.inputs.iter().any(|i| i.as_str() == *name)
                || self.stored(name).is_some();
            if !known {
                return Err(InterpError::Tensor {
                    name: name.to_string(),
                    msg: "fed, but the graph has no such tensor".into(),
                });
            }
            values.insert(*name, Value::from_tensor(t)?);
        }
        let fed: HashSet<&str> = values.keys().copied().collect();
        let nodes = self.needed_nodes(&fed, wanted)?;

        // Remaining readers of each tensor among the nodes to run, so
        // intermediate values are dropped as soon as they are used up.
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for &ix in &nodes {
            for i in self.graph.node[ix].input.iter().filter(|i| !i.is_empty()) {
                *uses.entry(i.as_str()).or_default() += 1;
            }
        }
        let keep: HashSet<&str> = wanted.iter().copied().collect();

        // A Conv or Add followed by the Relu/Clip that alone reads it runs
        // as one fused op, and so does a Conv followed by the residual Add
        // that alone reads it (and that Add's Relu/Clip), and a 1x1 Conv
        // followed by a depthwise Conv (each with its Relu/Clip); the fused
        // nodes are then skipped.
        let mut skip: Vec<usize> = Vec::new();
        for (pos, &ix) in nodes.iter().enumerate() {
            if let Some(i) = skip.iter().position(|&s| s == ix) {
                skip.swap_remove(i);
                continue;
            }
            let node = &self.graph.node[ix];
            let mut inputs = Vec::with_capacity(node.input.len());
            for name in &node.input {
                if name.is_empty() {
                    inputs.push(None);
                    continue;
                }
                let v = match values.get(name.as_str()) {
                    Some(v) => v.clone(),
                    None => self.stored(name).ok_or_else(|| InterpError::Node {
                        op: node.op_type.clone(),
                        node: node_label(node, ix),
                        msg: format!("input `{name}` is not available"),
                    })?,
                };
                inputs.push(Some(v));
            }
            let needed = node
                .output
                .iter()
                .map(|o| {
                    !o.is_empty() && (uses.contains_key(o.as_str()) || keep.contains(o.as_str()))
                })
                .collect();
            let (next, after) = (nodes.get(pos + 1).copied(), nodes.get(pos + 2).copied());
            let expand = self.fusable_expand_depthwise(&nodes, pos, &uses, &keep);
            let residual = match expand {
                Some(_) => None,
                None => self.fusable_residual(ix, next, after, &uses, &keep, |t| {
                    values.contains_key(t) || self.stored(t).is_some()
                }),
            };
            let act = match (&expand, residual) {
                (Some(x), _) => x.act1,
                (None, Some((_, _, act))) => act,
                (None, None) => self.fusable_activation(ix, next, &uses, &keep),
            };
            let mut fused = Fused {
                activation: act.map(|(_, b)| b),
                residual: None,
                depthwise: None,
            };
            // the inputs the fused nodes consume, besides the node's own
            let mut consumed: Vec<&str> = node
                .input
                .iter()
                .filter(|i| !i.is_empty())
                .map(String::as_str)
                .collect();
            let mut last = ix;
            if let Some((jx, other, _)) = residual {
                fused.residual = Some(match values.get(other) {
                    Some(v) => v.clone(),
                    None => self.stored(other).ok_or_else(|| InterpError::Tensor {
                        name: other.to_string(),
                        msg: "residual input is not available".into(),
                    })?,
                });
                consumed.push(other);
                skip.push(jx);
                last = jx;
            }
            if let Some((jx, _)) = act {
                skip.push(jx);
                last = jx;
            }
            if let Some(x) = expand {
                let dw = &self.graph.node[x.depthwise];
                let param = |i: usize| -> Result<Option<Value>> {
                    let Some(name) = dw.input.get(i).filter(|n| !n.is_empty()) else {
                        return Ok(None);
                    };
                    let v = values
                        .get(name.as_str())
                        .cloned()
                        .or_else(|| self.stored(name));
                    v.map(Some).ok_or_else(|| InterpError::Node {
                        op: dw.op_type.clone(),
                        node: node_label(dw, x.depthwise),
                        msg: format!("input `{name}` is not available"),
                    })
                };
                fused.depthwise = Some(FusedDepthwise {
                    node: x.depthwise,
                    weight: param(1)?.ok_or_else(|| InterpError::Node {
                        op: dw.op_type.clone(),
                        node: node_label(dw, x.depthwise),
                        msg: "no weight".into(),
                    })?,
                    bias: param(2)?,
                    activation: x.act2.map(|(_, b)| b),
                });
                consumed.extend(
                    dw.input
                        .iter()
                        .skip(1)
                        .filter(|i| !i.is_empty())
                        .map(String::as_str),
                );
                skip.push(x.depthwise);
                last = x.depthwise;
                if let Some((jx, _)) = x.act2 {
                    skip.push(jx);
                    last = jx;
                }
                self.expand_depthwise_runs.fetch_add(1, Ordering::Relaxed);
            }
            let outs = self.run_node(ix, inputs, needed, fused)?;
            for name in consumed {
                if let Some(u) = uses.get_mut(name) {
                    *u -= 1;
                    if *u == 0 && !keep.contains(name) {
                        values.remove(name);
                    }
                }
            }
            let out_names = &self.graph.node[last].output;
            for (name, v) in out_names.iter().zip(outs) {
                if !name.is_empty() {
                    values.insert(name.as_str(), v);
                }
            }
        }

        wanted
            .iter()
            .map(|&w| {
                let v = match values.get(w) {
                    Some(v) => v.clone(),
                    None => self.stored(w).ok_or_else(|| InterpError::Tensor {
                        name: w.to_string(),
                        msg: "was not computed (no node produces it)".into(),
                    })?,
                };
                Ok(v.into_tensor(&self.device)?)
            })
            .collect()
    }

    /// The trainable variables, in initializer order (for the optimizer).
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The trainable variables with their initializer names.
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The trainable variables an optimiser updates, with their names:
    /// all but BatchNormalization's running mean and variance. Those are
    /// measured statistics, not learned weights (PyTorch keeps them as
    /// buffers); a gradient step on a variance near 0 can make
    /// `var + epsilon` negative and the layer NaN (DenseNet121's stored
    /// variances go down to 1.7e-12).
    pub fn optimised_vars(&self) -> impl Iterator<Item = &(String, Var)> {
        self.vars
            .iter()
            .filter(|(name, _)| !self.statistics.contains(name))
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's opset (default domain).
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Current values of the trainable initializers as ONNX float
    /// initializers with the same names and dims.
    pub fn export(&self) -> Result<Vec<TensorProto>> {
        self.vars
            .iter()
            .map(|(name, var)| params::tensor_to_proto(name, var.as_tensor()))
            .collect()
    }

    /// Write the current trainable values into `model`'s initializers (by
    /// name); returns how many were replaced.
    pub fn export_into(&self, model: &mut ModelProto) -> Result<usize> {
        let mut fresh: HashMap<String, TensorProto> = self
            .export()?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut n = 0;
        if let Some(g) = model.graph.as_mut() {
            for init in g.initializer.iter_mut() {
                if let Some(t) = fresh.remove(&init.name) {
                    *init = TensorProto {
                        doc_string: std::mem::take(&mut init.doc_string),
                        ..t
                    };
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
