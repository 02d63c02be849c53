//! The supernet of a bundle as the search sees it: its branches by start
//! cut (optionally restricted to some kinds), span plans, subnet counting,
//! enumeration and random paths.

use std::collections::HashMap;

use adaptivenet_onnx::bundle::{BranchId, BranchKind, Bundle, Manifest, SubnetId};
use adaptivenet_onnx::facts::{infer_facts, ModelFacts};
use adaptivenet_onnx::tract_onnx::pb::ModelProto;
use adaptivenet_onnx::{GraphIndex, Plan, Span};

use crate::error::{invalid, Context, Result};
use crate::Rng;

/// The supernet of a bundle as the search sees it: the model, its graph
/// index, and the branches the search may use (originals always).
#[derive(Debug, Clone)]
pub struct Supernet {
    pub manifest: Manifest,
    pub model: ModelProto,
    pub index: GraphIndex,
    /// Shape of one input item (the manifest's input shape without the batch).
    pub item_shape: Vec<usize>,
    /// Usable branches, by start cut (`by_cut[i]`: branches c_i -> c_j, j <= N).
    pub by_cut: Vec<Vec<BranchId>>,
}

impl Supernet {
    /// The whole bundle, every branch kind.
    pub fn of_bundle(bundle: &Bundle) -> Result<Supernet> {
        Supernet::restricted(bundle, None)
    }

    /// The bundle restricted to originals plus the given kinds of new
    /// branches (`None`: all kinds).
    pub fn restricted(bundle: &Bundle, kinds: Option<&[BranchKind]>) -> Result<Supernet> {
        let manifest = bundle.manifest.clone();
        let index = GraphIndex::of_model(&bundle.model)
            .with_context(|| format!("{}: supernet.onnx", bundle.path.display()))?;
        let item_shape = manifest.item_shape().ok_or_else(|| {
            invalid!(
                "{}: manifest input.shape: every dim after the batch must be fixed",
                bundle.path.display()
            )
        })?;
        let n = manifest.num_blocks();
        let mut by_cut = vec![Vec::new(); n];
        for b in &manifest.branches {
            let keep = b.kind == BranchKind::Original
                || kinds.map(|k| k.contains(&b.kind)).unwrap_or(true);
            if keep && b.from < n && b.to <= n && b.to > b.from {
                by_cut[b.from].push(b.id);
            }
        }
        for (i, v) in by_cut.iter_mut().enumerate() {
            v.sort();
            if !v.contains(&BranchId::Original { block: i }) {
                return Err(invalid!(
                    "{}: manifest branches: the original block `b{i}` is missing",
                    bundle.path.display()
                ));
            }
        }
        Ok(Supernet {
            manifest,
            model: bundle.model.clone(),
            index,
            item_shape,
            by_cut,
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.manifest.num_blocks()
    }

    /// Every usable branch, in order of start cut.
    pub fn branches(&self) -> impl Iterator<Item = BranchId> + '_ {
        self.by_cut.iter().flatten().copied()
    }

    pub fn oracle(&self) -> SubnetId {
        self.manifest.oracle_subnet()
    }

    fn cut(&self, i: usize) -> &str {
        &self.manifest.cuts[i].tensor
    }

    /// input -> c_0
    pub fn stem_span(&self) -> Span {
        Span::new(self.manifest.input.name.clone(), self.cut(0))
    }

    /// c_N -> output
    pub fn head_span(&self) -> Span {
        Span::new(
            self.cut(self.num_blocks()),
            self.manifest.output.name.clone(),
        )
    }

    /// c_from -> the tensor the branch writes.
    pub fn branch_span(&self, id: &BranchId) -> Result<Span> {
        let b = self
            .manifest
            .branch(id)
            .ok_or_else(|| invalid!("no branch `{id}` in the bundle"))?;
        Ok(Span::new(self.cut(b.from), b.tensor.clone()))
    }

    /// Is `subnet` a path through the usable branches?
    pub fn contains(&self, subnet: &SubnetId) -> bool {
        let mut at = 0;
        for b in subnet.branches() {
            if at >= self.by_cut.len() || !self.by_cut[at].contains(b) {
                return false;
            }
            at = b.to_cut();
        }
        at == self.num_blocks()
    }

    /// How many subnets the usable branches allow (saturating).
    pub fn count_subnets(&self) -> u128 {
        let n = self.num_blocks();
        let mut ways = vec![0u128; n + 1];
        ways[0] = 1;
        for at in 0..n {
            for b in &self.by_cut[at] {
                ways[b.to_cut()] = ways[b.to_cut()].saturating_add(ways[at]);
            }
        }
        ways[n]
    }

    /// A random path: a uniformly chosen usable branch at each cut.
    pub fn random_subnet(&self, rng: &mut Rng) -> SubnetId {
        let mut at = 0;
        let mut path = Vec::new();
        while at < self.num_blocks() {
            let opts = &self.by_cut[at];
            let b = opts[rng.below(opts.len())];
            path.push(b);
            at = b.to_cut();
        }
        SubnetId(path)
    }

    /// Every subnet (call only when [`Supernet::count_subnets`] is small).
    pub fn enumerate(&self) -> Vec<SubnetId> {
        fn walk(s: &Supernet, at: usize, path: &mut Vec<BranchId>, out: &mut Vec<SubnetId>) {
            if at == s.num_blocks() {
                out.push(SubnetId(path.clone()));
                return;
            }
            for b in &s.by_cut[at] {
                path.push(*b);
                walk(s, b.to_cut(), path, out);
                path.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, 0, &mut Vec::new(), &mut out);
        out
    }

    /// Tensor facts of the supernet at `batch`.
    pub fn facts(&self, batch: usize) -> Result<ModelFacts> {
        infer_facts(&self.model, batch).context("inferring the supernet's tensor shapes")
    }

    /// Plans for the stem, the head and every usable branch at the batch of `facts`.
    pub fn span_plans(&self, facts: &ModelFacts) -> Result<SpanPlans> {
        let compile = |span: &Span, what: &str| {
            Plan::for_span(&self.model, &self.index, facts, span)
                .with_context(|| format!("compiling {what}"))
        };
        let stem = compile(&self.stem_span(), "the stem")?;
        let head = compile(&self.head_span(), "the head")?;
        let mut branches = HashMap::new();
        for id in self.branches() {
            let plan = compile(&self.branch_span(&id)?, &format!("branch `{id}`"))?;
            branches.insert(id, plan);
        }
        Ok(SpanPlans {
            batch: facts.batch,
            stem,
            head,
            branches,
        })
    }

    /// Elements of cut tensor c_i per item.
    pub fn cut_len(&self, i: usize) -> usize {
        self.manifest.cuts[i]
            .shape
            .iter()
            .skip(1)
            .filter_map(|d| d.fixed())
            .product()
    }

    /// Materialise `subnet` as one standalone model.
    pub fn materialise(&self, subnet: &SubnetId) -> Result<ModelProto> {
        let path = adaptivenet_onnx::supernet::subnet_path(&self.manifest, subnet)?;
        Ok(adaptivenet_onnx::extract::materialise(
            &self.model,
            &self.index,
            &path,
        )?)
    }
}

/// Compiled plans of the stem, head and branches at one batch size.
#[derive(Debug, Clone)]
pub struct SpanPlans {
    pub batch: usize,
    pub stem: Plan,
    pub head: Plan,
    pub branches: HashMap<BranchId, Plan>,
}

impl SpanPlans {
    pub fn branch(&self, id: &BranchId) -> Result<&Plan> {
        self.branches
            .get(id)
            .ok_or_else(|| invalid!("branch `{id}` has no plan"))
    }
}
