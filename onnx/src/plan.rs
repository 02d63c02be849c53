//! Block plans: any span c_i -> c_j (or a whole model) compiled into its own
//! optimised tract plan with a concrete input shape, and chains of them;
//! a per-op profile of a plan's run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::blocks::Span;
use crate::error::{Error, Result};
use crate::extract::{extract_span, fixed};
use crate::facts::{input_shape, ModelFacts};
use crate::graph::GraphIndex;

/// An optimised, runnable tract plan for one span or one whole model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the plan computes (for messages).
    pub label: String,
    /// The fixed input shape.
    pub input_shape: Vec<usize>,
    runnable: Arc<TypedRunnableModel>,
}

impl Plan {
    /// Compile a single-input model proto with its input fixed to `shape`.
    pub fn from_proto(proto: &ModelProto, shape: &[usize], label: &str) -> Result<Plan> {
        let runnable = crate::guard(&format!("compiling {label}"), || {
            let onnx = tract_onnx::onnx();
            let model = onnx
                .model_for_proto_model(proto)?
                .with_input_fact(0, f32::fact(shape).into())?;
            model.into_optimized()?.into_runnable()
        })?;
        Ok(Plan {
            label: label.to_string(),
            input_shape: shape.to_vec(),
            runnable,
        })
    }

    /// Compile a whole model at batch size `batch`.
    pub fn whole_model(model: &ModelProto, batch: usize) -> Result<Plan> {
        let index = GraphIndex::of_model(model)?;
        let input = index.single_input()?;
        let shape = input_shape(model, input, batch)?;
        Plan::from_proto(model, &shape, "the whole model")
    }

    /// Compile span `span` of `model`, using `facts` for its input shape (the
    /// batch size of the facts is the plan's batch size).
    pub fn for_span(
        model: &ModelProto,
        index: &GraphIndex,
        facts: &ModelFacts,
        span: &Span,
    ) -> Result<Plan> {
        let in_shape = facts.get(&span.from)?.shape.clone();
        let out_dims = facts.tensors.get(&span.to).map(|f| fixed(&f.shape));
        let proto = extract_span(model, index, span, &fixed(&in_shape), out_dims.as_deref())?;
        Plan::from_proto(
            &proto,
            &in_shape,
            &format!("span `{}` -> `{}`", span.from, span.to),
        )
    }

    /// Run the plan on one tensor; returns its first output.
    pub fn run(&self, input: Tensor) -> Result<Tensor> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(Error::Graph(format!(
                "{}: input has shape {:?}, the plan was compiled for {:?}",
                self.label,
                input.shape(),
                self.input_shape
            )));
        }
        let mut out = crate::guard(&format!("running {}", self.label), || {
            self.runnable.run(tvec!(input.into()))
        })?;
        if out.is_empty() {
            return Err(Error::Graph(format!(
                "{}: the plan produced no output",
                self.label
            )));
        }
        Ok(out.remove(0).into_tensor())
    }

    /// Where a run's time goes: `runs` runs of `input`, each node timed,
    /// summed per tract op name (`OptMatMul`, `LazyIm2col`, ...) and sorted
    /// by time, most first. Times are totals over the runs.
    pub fn profile_ops(&self, input: &Tensor, runs: usize) -> Result<Vec<OpTime>> {
        let mut by_op: HashMap<String, (Duration, usize)> = HashMap::new();
        crate::guard(&format!("profiling {}", self.label), || {
            let mut state = tract_onnx::tract_core::plan::SimpleState::new(&self.runnable)?;
            for _ in 0..runs.max(1) {
                state.run_plan_with_eval(
                    tvec!(input.clone().into()),
                    |session, op_state, node, inputs| {
                        let t = Instant::now();
                        let out =
                            tract_onnx::tract_core::plan::eval(session, op_state, node, inputs);
                        let e = by_op.entry(node.op().name().to_string()).or_default();
                        e.0 += t.elapsed();
                        e.1 += 1;
                        out
                    },
                )?;
            }
            Ok(())
        })?;
        let mut ops: Vec<OpTime> = by_op
            .into_iter()
            .map(|(op, (time, nodes_run))| OpTime {
                op,
                seconds: time.as_secs_f64(),
                nodes_run,
            })
            .collect();
        ops.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(ops)
    }
}

/// One op kind's share of [`Plan::profile_ops`].
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// tract's name of the optimised op.
    pub op: String,
    /// Total time in nodes of this op over all the runs, s.
    pub seconds: f64,
    /// Node evaluations of this op over all the runs.
    pub nodes_run: usize,
}

/// Plans for a path of spans, run one after the other.
#[derive(Debug, Clone)]
pub struct ChainedPlans {
    pub plans: Vec<Plan>,
}

impl ChainedPlans {
    /// Compile every span of `path` at the batch size of `facts`.
    pub fn compile(
        model: &ModelProto,
        index: &GraphIndex,
        facts: &ModelFacts,
        path: &[Span],
    ) -> Result<ChainedPlans> {
        let plans = path
            .iter()
            .map(|s| Plan::for_span(model, index, facts, s))
            .collect::<Result<_>>()?;
        Ok(ChainedPlans { plans })
    }

    /// Run the chain.
    pub fn run(&self, input: Tensor) -> Result<Tensor> {
        let mut x = input;
        for p in &self.plans {
            x = p.run(x)?;
        }
        Ok(x)
    }
}

impl ChainedPlans {
    /// Run the chain and keep every plan's output (for the oracle path: the
    /// cut tensors c_0..c_N and then the logits).
    pub fn run_collect(&self, input: Tensor) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(self.plans.len());
        let mut x = input;
        for p in &self.plans {
            let y = p.run(x)?;
            outs.push(y.clone());
            x = y;
        }
        Ok(outs)
    }
}
