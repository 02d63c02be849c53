//! The oracle: a loaded ONNX model together with its graph index, detected
//! block layout and tensor facts, and the summary `adaptivenet blocks` prints.

use std::path::Path;

use serde::Serialize;
use tract_onnx::pb::{GraphProto, ModelProto};

use crate::blocks::{detect_blocks, BlockLayout, Span};
use crate::error::{Error, Result};
use crate::facts::{infer_facts, ModelFacts};
use crate::graph::GraphIndex;
use crate::plan::{ChainedPlans, Plan};
use crate::stats::{span_stats, SpanStats};

/// A model split into stem, blocks and head.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// Where it came from (for messages).
    pub origin: String,
    pub model: ModelProto,
    pub index: GraphIndex,
    pub layout: BlockLayout,
    /// Facts at batch 1.
    pub facts: ModelFacts,
}

/// One part (stem, block or head) as printed by `adaptivenet blocks`.
#[derive(Debug, Clone, Serialize)]
pub struct PartSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub input: String,
    pub output: String,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    #[serde(flatten)]
    pub stats: SpanStats,
}

/// The whole split, as one JSON object with `stem`, `blocks` and `head`.
#[derive(Debug, Clone, Serialize)]
pub struct LayoutSummary {
    pub model: String,
    pub stem: PartSummary,
    pub blocks: Vec<PartSummary>,
    pub head: PartSummary,
}

impl Oracle {
    /// Load a model file and detect (or apply `cuts` to) its blocks.
    pub fn load(path: impl AsRef<Path>, cuts: Option<&[String]>) -> Result<Oracle> {
        let path = path.as_ref();
        let model = crate::model_io::load_model(path)?;
        Oracle::from_model(model, &path.display().to_string(), cuts)
    }

    /// Analyse an already decoded model.
    pub fn from_model(model: ModelProto, origin: &str, cuts: Option<&[String]>) -> Result<Oracle> {
        let ctx = |e: Error| match e {
            Error::Graph(m) => Error::BadModel {
                origin: origin.to_string(),
                problem: m,
            },
            Error::Tract { context, message } => Error::BadModel {
                origin: origin.to_string(),
                problem: format!("tract: {context}: {message}"),
            },
            other => other,
        };
        let index = GraphIndex::of_model(&model).map_err(ctx)?;
        let graph = graph_of(&model)?;
        let layout = detect_blocks(graph, &index, cuts).map_err(ctx)?;
        let facts = infer_facts(&model, 1).map_err(ctx)?;
        for cut in &layout.cuts {
            facts.get(cut).map_err(ctx)?;
        }
        Ok(Oracle {
            origin: origin.to_string(),
            model,
            index,
            layout,
            facts,
        })
    }

    pub fn graph(&self) -> &GraphProto {
        // from_model checked the graph exists
        self.model
            .graph
            .as_ref()
            .expect("oracle models always have a graph")
    }

    /// Tensor facts at batch `batch` (cheap for batch 1, inferred otherwise).
    pub fn facts_at(&self, batch: usize) -> Result<ModelFacts> {
        if batch == 1 {
            Ok(self.facts.clone())
        } else {
            infer_facts(&self.model, batch)
        }
    }

    /// Summary of one span.
    pub fn part(&self, span: &Span, index: Option<usize>) -> Result<PartSummary> {
        Ok(PartSummary {
            index,
            input: span.from.clone(),
            output: span.to.clone(),
            input_shape: self.facts.get(&span.from)?.shape.clone(),
            output_shape: self.facts.get(&span.to)?.shape.clone(),
            stats: span_stats(self.graph(), &self.index, &self.facts, span)?,
        })
    }

    /// Summary of the whole split.
    pub fn summary(&self) -> Result<LayoutSummary> {
        Ok(LayoutSummary {
            model: self.origin.clone(),
            stem: self.part(&self.layout.stem(), None)?,
            blocks: self
                .layout
                .blocks()
                .iter()
                .enumerate()
                .map(|(i, s)| self.part(s, Some(i)))
                .collect::<Result<_>>()?,
            head: self.part(&self.layout.head(), None)?,
        })
    }

    /// Plans for stem, every block and head, at batch `batch`.
    pub fn block_plans(&self, batch: usize) -> Result<ChainedPlans> {
        let facts = self.facts_at(batch)?;
        ChainedPlans::compile(&self.model, &self.index, &facts, &self.layout.oracle_path())
    }

    /// The whole model as one plan at batch `batch`.
    pub fn whole_plan(&self, batch: usize) -> Result<Plan> {
        Plan::whole_model(&self.model, batch)
    }
}

fn graph_of(model: &ModelProto) -> Result<&GraphProto> {
    model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))
}
