//! The inference engine: a subnet of a bundle's supernet materialised into one
//! standalone ONNX model and compiled into tract plans (one per batch size,
//! compiled on first use and cached), plus the bundle's input handling
//! (shape checks, UINT8 preprocessing per channel in the model's layout).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use adaptivenet_onnx::bundle::{Bundle, Preprocess, SubnetId};
use adaptivenet_onnx::extract::materialise;
use adaptivenet_onnx::supernet::subnet_path;
use adaptivenet_onnx::tract_onnx::pb::ModelProto;
use adaptivenet_onnx::tract_onnx::prelude::Tensor;
use adaptivenet_onnx::{GraphIndex, ImageLayout, Plan};

/// Why a subnet cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Subnet(String),
    #[error("{0}")]
    Model(#[from] adaptivenet_onnx::Error),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// Plans kept per engine (distinct batch sizes); the least recently used
/// beyond this is dropped.
const MAX_CACHED_PLANS: usize = 8;

/// Materialise `subnet` of the bundle's supernet as one standalone model.
pub fn materialise_subnet(bundle: &Bundle, subnet: &SubnetId) -> Result<ModelProto> {
    let path =
        subnet_path(&bundle.manifest, subnet).map_err(|e| EngineError::Subnet(e.to_string()))?;
    let index = GraphIndex::of_model(&bundle.model)?;
    Ok(materialise(&bundle.model, &index, &path)?)
}

/// One subnet, ready to run at any batch size.
#[derive(Debug)]
pub struct Engine {
    pub subnet: SubnetId,
    /// Shape of one input item (the manifest's input shape without the batch).
    pub item_shape: Vec<usize>,
    /// Number of output classes (logits per item).
    pub classes: usize,
    /// Per-channel `(x / 255 - mean) / std` for UINT8 input.
    pub preprocess: Preprocess,
    /// The input's image layout (`NCHW` / `NHWC`), when it is an image.
    pub layout: Option<ImageLayout>,
    model: ModelProto,
    plans: Mutex<PlanCache>,
}

#[derive(Debug, Default)]
struct PlanCache {
    plans: HashMap<usize, (Arc<Plan>, u64)>,
    tick: u64,
}

impl Engine {
    /// Materialise and compile `subnet` (batch 1 at once; it is run on zeros
    /// to learn the number of classes and to fail early on a bad model).
    pub fn build(bundle: &Bundle, subnet: &SubnetId) -> Result<Engine> {
        let m = &bundle.manifest;
        let dtype = m.input.dtype.to_ascii_lowercase();
        if !matches!(dtype.as_str(), "float" | "f32" | "float32") {
            return Err(EngineError::Subnet(format!(
                "input.dtype `{}`: the daemon serves float32 models only",
                m.input.dtype
            )));
        }
        let item_shape = m.item_shape().ok_or_else(|| {
            EngineError::Subnet("input.shape: every dim after the batch must be fixed".into())
        })?;
        let layout = m.image_layout().filter(|l| l.chw(&item_shape).is_some());
        let model = materialise_subnet(bundle, subnet)?;
        let engine = Engine {
            subnet: subnet.clone(),
            item_shape,
            classes: 0,
            preprocess: m.input.preprocess.clone(),
            layout,
            model,
            plans: Mutex::new(PlanCache::default()),
        };
        let zeros = engine.zeros(1)?;
        let out = engine.run(zeros)?;
        let shape = out.shape().to_vec();
        if shape.len() != 2 || shape[0] != 1 {
            return Err(EngineError::Subnet(format!(
                "output `{}` has shape {shape:?} at batch 1; expected [1, classes]",
                m.output.name
            )));
        }
        Ok(Engine {
            classes: shape[1],
            ..engine
        })
    }

    /// The materialised subnet (a standalone ONNX model).
    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// Elements per input item.
    pub fn item_len(&self) -> usize {
        self.item_shape.iter().product()
    }

    /// A zero input of `batch` items.
    pub fn zeros(&self, batch: usize) -> Result<Tensor> {
        self.tensor(batch, vec![0.0; batch * self.item_len()])
    }

    /// A float32 input tensor [batch, item_shape...] from row-major data.
    pub fn tensor(&self, batch: usize, data: Vec<f32>) -> Result<Tensor> {
        let mut shape = vec![batch];
        shape.extend(&self.item_shape);
        if data.len() != shape.iter().product::<usize>() {
            return Err(EngineError::Input(format!(
                "{} values for shape {shape:?}",
                data.len()
            )));
        }
        Tensor::from_shape(&shape, &data).map_err(|e| EngineError::Input(format!("{e}")))
    }

    /// `(C, H, W)` of an image input.
    pub fn chw(&self) -> Option<(usize, usize, usize)> {
        self.layout.and_then(|l| l.chw(&self.item_shape))
    }

    /// Apply the bundle's preprocessing to raw UINT8 pixels, whole items in
    /// the model's layout (without an image layout, the channel is the
    /// first axis of an item).
    pub fn preprocess_u8(&self, raw: &[u8]) -> Vec<f32> {
        match (self.layout, self.chw()) {
            (Some(l), Some(chw)) => self.preprocess.apply_image(l, chw, raw),
            _ => self.preprocess.apply_items(&self.item_shape, raw),
        }
    }

    /// The plan for `batch`, compiled on first use.
    pub fn plan(&self, batch: usize) -> Result<Arc<Plan>> {
        {
            let mut cache = self.plans.lock().unwrap_or_else(|p| p.into_inner());
            cache.tick += 1;
            let tick = cache.tick;
            if let Some((plan, used)) = cache.plans.get_mut(&batch) {
                *used = tick;
                return Ok(plan.clone());
            }
        }
        // Compile outside the lock: other batch sizes keep running meanwhile.
        let plan = Arc::new(Plan::whole_model(&self.model, batch)?);
        let mut cache = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        if cache.plans.len() >= MAX_CACHED_PLANS && !cache.plans.contains_key(&batch) {
            if let Some(oldest) = cache
                .plans
                .iter()
                .filter(|(b, _)| **b != 1)
                .min_by_key(|(_, (_, t))| *t)
                .map(|(b, _)| *b)
            {
                cache.plans.remove(&oldest);
            }
        }
        cache.plans.insert(batch, (plan.clone(), tick));
        Ok(plan)
    }

    /// Run on a float32 input [batch, item_shape...]; returns the logits [batch, classes].
    pub fn run(&self, input: Tensor) -> Result<Tensor> {
        let batch = *input
            .shape()
            .first()
            .ok_or_else(|| EngineError::Input("a scalar input".into()))?;
        if batch == 0 {
            return Err(EngineError::Input("an empty batch".into()));
        }
        Ok(self.plan(batch)?.run(input)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use adaptivenet_onnx::bundle::{
        batch_shape, Branch, BranchKind, Cut, InputSpec, Manifest, ModelInfo, OutputSpec,
    };

    use adaptivenet_onnx::Span;

    use super::*;

    fn manifest() -> Manifest {
        let cut = |i: usize| Cut {
            index: i,
            tensor: format!("c{i}"),
            shape: batch_shape("N", &[8, 4, 4]),
        };
        let mut branches: Vec<Branch> = (0..3)
            .map(|b| Branch::original(b, format!("c{}", b + 1), 100, 10))
            .collect();
        branches.push(Branch {
            id: "m0x2".parse().unwrap(),
            from: 0,
            to: 2,
            kind: BranchKind::Merge,
            params: BTreeMap::new(),
            tensor: "branch_m0x2".into(),
            macs: 120,
            param_count: 12,
            distill_loss: Some(0.01),
        });
        Manifest {
            format_version: 1,
            model: ModelInfo {
                name: "toy".into(),
                version: 3,
            },
            compatible: "generic-cpu".into(),
            input: InputSpec {
                name: "x".into(),
                shape: batch_shape("N", &[1, 4, 4]),
                dtype: "float".into(),
                layout: "NCHW".into(),
                preprocess: Preprocess {
                    mean: vec![0.5],
                    std: vec![0.25],
                },
                labels: vec![],
            },
            output: OutputSpec { name: "y".into() },
            cuts: (0..4).map(cut).collect(),
            branches,
            files: BTreeMap::new(),
            created_by: None,
        }
    }

    fn spans(p: &[Span]) -> Vec<(String, String)> {
        p.iter().map(|s| (s.from.clone(), s.to.clone())).collect()
    }

    #[test]
    fn subnet_paths_run_stem_branches_head() {
        let m = manifest();
        let p = subnet_path(&m, &m.oracle_subnet()).unwrap();
        let want = [
            ("x", "c0"),
            ("c0", "c1"),
            ("c1", "c2"),
            ("c2", "c3"),
            ("c3", "y"),
        ];
        assert_eq!(spans(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
        let p = subnet_path(&m, &"m0x2 b2".parse().unwrap()).unwrap();
        let want = [
            ("x", "c0"),
            ("c0", "branch_m0x2"),
            ("c2", "c3"),
            ("c3", "y"),
        ];
        assert_eq!(spans(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
        let e = subnet_path(&m, &"m0x2 b1 b2".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("starts at cut 1"), "{e}");
        let e = subnet_path(&m, &"b0 m1x2".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in the bundle"), "{e}");
    }
}
