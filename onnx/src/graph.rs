//! A read-only index over an ONNX graph: who produces and who consumes each
//! tensor, which tensors are constant (weights), a topological order, and the
//! "live" nodes that lie on a path from the data input to the outputs.
//! Cut and block detection, span extraction and statistics all stand on it.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{GraphProto, ModelProto};

use crate::error::{Error, Result};

/// Ops whose single data input passes through element by element: the
/// activations that may follow a merge or a weighted op inside one unit.
pub const ELEMENTWISE_UNARY: &[&str] = &[
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "PRelu",
    "Softplus",
    "Mish",
    "Gelu",
];

/// Ops that carry learned weights and do the bulk of the arithmetic.
pub const WEIGHTED: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// Ops that merge parallel paths; a block closes at one of them.
pub const MERGE: &[&str] = &["Add", "Sum", "Concat"];

/// Index over one graph. Node indices refer to `graph.node`.
#[derive(Debug, Clone)]
pub struct GraphIndex {
    /// Tensor name -> index of the node that produces it.
    pub producer: HashMap<String, usize>,
    /// Tensor name -> indices of the nodes that read it (in graph order, deduplicated).
    pub consumers: HashMap<String, Vec<usize>>,
    /// Tensors whose value does not depend on any graph input: initializers
    /// and outputs of nodes that read only constants (Constant, ConstantOfShape, ...).
    pub constant: HashSet<String>,
    /// `true` for nodes that read only constants.
    pub const_node: Vec<bool>,
    /// Graph inputs that are real data inputs (not initializers).
    pub inputs: Vec<String>,
    /// Graph outputs, in declaration order.
    pub outputs: Vec<String>,
    /// Node indices in a topological order.
    pub order: Vec<usize>,
    /// Position of each node in `order`.
    pub position: Vec<usize>,
    /// Node is non-constant, reachable from a data input and reaches an output.
    pub live: Vec<bool>,
}

impl GraphIndex {
    /// Build the index of a model's main graph.
    pub fn of_model(model: &ModelProto) -> Result<GraphIndex> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::Graph("model has no graph".into()))?;
        GraphIndex::new(graph)
    }

    /// Build the index; fails on a node reading a tensor that nothing
    /// provides, on a tensor produced twice, and on cycles.
    pub fn new(graph: &GraphProto) -> Result<GraphIndex> {
        let initializers: HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<String> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(|i| i.name.clone())
            .collect();
        let mut producer = HashMap::new();
        for (ix, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if producer.insert(out.clone(), ix).is_some() {
                    return Err(Error::Graph(format!(
                        "tensor `{out}` is produced by two nodes"
                    )));
                }
            }
        }
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (ix, node) in graph.node.iter().enumerate() {
            for inp in node.input.iter().filter(|i| !i.is_empty()) {
                if !producer.contains_key(inp)
                    && !initializers.contains(inp.as_str())
                    && !inputs.iter().any(|i| i == inp)
                {
                    return Err(Error::Graph(format!(
                        "node `{}` ({}) reads tensor `{inp}` that no node, input or initializer provides",
                        node.name, node.op_type
                    )));
                }
                let list = consumers.entry(inp.clone()).or_default();
                if list.last() != Some(&ix) {
                    list.push(ix);
                }
            }
        }

        // Kahn's algorithm, preferring graph order among ready nodes so the
        // order is the file's own when the file is already sorted.
        let n = graph.node.len();
        let mut pending: Vec<usize> = vec![0; n];
        for (ix, node) in graph.node.iter().enumerate() {
            let deps: HashSet<usize> = node
                .input
                .iter()
                .filter_map(|i| producer.get(i).copied())
                .collect();
            pending[ix] = deps.len();
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| pending[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(ix) = ready.pop_first() {
            order.push(ix);
            let mut succs: HashSet<usize> = HashSet::new();
            for out in graph.node[ix].output.iter() {
                if let Some(cs) = consumers.get(out) {
                    succs.extend(cs.iter().copied());
                }
            }
            for s in succs {
                pending[s] -= 1;
                if pending[s] == 0 {
                    ready.insert(s);
                }
            }
        }
        if order.len() != n {
            return Err(Error::Graph("the graph has a cycle".into()));
        }
        let mut position = vec![0; n];
        for (p, &ix) in order.iter().enumerate() {
            position[ix] = p;
        }

        let mut constant: HashSet<String> = initializers.iter().map(|s| s.to_string()).collect();
        let mut const_node = vec![false; n];
        for &ix in &order {
            let node = &graph.node[ix];
            let is_const = node
                .input
                .iter()
                .filter(|i| !i.is_empty())
                .all(|i| constant.contains(i));
            if is_const {
                const_node[ix] = true;
                constant.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
            }
        }

        // Live: forward from data inputs, backward from outputs, non-constant.
        let mut forward = vec![false; n];
        let mut reached: HashSet<&str> = inputs.iter().map(String::as_str).collect();
        for &ix in &order {
            let node = &graph.node[ix];
            if !const_node[ix] && node.input.iter().any(|i| reached.contains(i.as_str())) {
                forward[ix] = true;
                reached.extend(node.output.iter().map(String::as_str));
            }
        }
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let mut needed: HashSet<&str> = outputs.iter().map(String::as_str).collect();
        let mut live = vec![false; n];
        for &ix in order.iter().rev() {
            let node = &graph.node[ix];
            if node.output.iter().any(|o| needed.contains(o.as_str())) {
                if forward[ix] {
                    live[ix] = true;
                }
                needed.extend(node.input.iter().map(String::as_str));
            }
        }
        Ok(GraphIndex {
            producer,
            consumers,
            constant,
            const_node,
            inputs,
            outputs,
            order,
            position,
            live,
        })
    }

    /// The single data input, or an error naming how many there are.
    pub fn single_input(&self) -> Result<&str> {
        match self.inputs.as_slice() {
            [one] => Ok(one),
            other => Err(Error::Graph(format!(
                "the model has {} data inputs ({}); block detection needs exactly one",
                other.len(),
                other.join(", ")
            ))),
        }
    }

    /// The first graph output.
    pub fn main_output(&self) -> Result<&str> {
        self.outputs
            .first()
            .map(String::as_str)
            .ok_or_else(|| Error::Graph("the model has no outputs".into()))
    }

    /// Non-constant inputs of a node (its data inputs).
    pub fn data_inputs<'g>(&self, graph: &'g GraphProto, node: usize) -> Vec<&'g str> {
        let mut seen = Vec::new();
        for i in graph.node[node].input.iter() {
            if !i.is_empty() && !self.constant.contains(i) && !seen.contains(&i.as_str()) {
                seen.push(i.as_str());
            }
        }
        seen
    }

    /// Live consumers of a tensor.
    pub fn live_consumers(&self, tensor: &str) -> Vec<usize> {
        self.consumers
            .get(tensor)
            .map(|cs| cs.iter().copied().filter(|&c| self.live[c]).collect())
            .unwrap_or_default()
    }

    /// All nodes needed to compute `targets` from `from`: walks backwards from
    /// the targets and stops at `from`. Constant nodes they need are included.
    /// Fails when a target depends on a data input other than `from`, i.e.
    /// when `from` is not a cut for the targets. Returns node indices in
    /// topological order.
    pub fn nodes_between(
        &self,
        graph: &GraphProto,
        from: &str,
        targets: &[&str],
    ) -> Result<Vec<usize>> {
        let mut stack: Vec<&str> = Vec::new();
        for &t in targets {
            if t != from && !self.producer.contains_key(t) && !self.constant.contains(t) {
                return Err(Error::Graph(format!(
                    "tensor `{t}` is not produced by any node"
                )));
            }
            stack.push(t);
        }
        let mut seen_tensor: HashSet<&str> = HashSet::new();
        let mut nodes: HashSet<usize> = HashSet::new();
        while let Some(t) = stack.pop() {
            if t == from || !seen_tensor.insert(t) {
                continue;
            }
            match self.producer.get(t) {
                Some(&p) => {
                    if nodes.insert(p) {
                        stack.extend(
                            graph.node[p]
                                .input
                                .iter()
                                .filter(|i| !i.is_empty())
                                .map(String::as_str),
                        );
                    }
                }
                None => {
                    if !self.constant.contains(t) {
                        return Err(Error::Graph(format!(
                            "`{}` is not a cut before {}: they also depend on the input `{t}`",
                            from,
                            targets
                                .iter()
                                .map(|t| format!("`{t}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
        }
        let mut nodes: Vec<usize> = nodes.into_iter().collect();
        nodes.sort_by_key(|&n| self.position[n]);
        Ok(nodes)
    }
}
