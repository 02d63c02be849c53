//! Accuracy of subnets on local data, evaluated as a prefix tree.
//!
//! The data is cut into fixed-size batches (the last one padded with zeros,
//! its padding rows ignored), each part of the supernet compiled once at that
//! batch size. A population of subnets becomes a trie of branches: the root
//! is the stem output c_0, a node is a branch applied to its parent's output,
//! a leaf is a complete subnet (the head runs there). For every batch the
//! trie is walked depth first: a prefix shared by many subnets is computed
//! once and its cut tensor reused by every child.
//!
//! Memory for cached cut tensors is bounded: a walk holds at most one tensor
//! per depth of the path it is on (the parent's, kept for its remaining
//! children) plus the one being computed, so per worker thread at most
//! `batch x (sum of all cut sizes + the largest cut)` floats
//! ([`Evaluator::cache_bound_bytes`]); nothing is kept across batches.
//!
//! Naive per-subnet evaluation ([`Evaluator::evaluate_naive`]) runs the same
//! plans on the same batches one subnet at a time, so the two give exactly
//! the same logits (bit for bit) and the same accuracy.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{invalid, Result, SearchError};
use adaptivenet_onnx::bundle::{BranchId, SubnetId};
use adaptivenet_onnx::dataset::{argmax_rows, Dataset};
use adaptivenet_onnx::tract_onnx::prelude::Tensor;

use crate::progress::{self, Phase, ProgressHook};
use crate::{SpanPlans, Supernet};

/// A trie of subnets.
#[derive(Debug, Default)]
pub struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    branch: Option<BranchId>,
    children: Vec<usize>,
    /// Subnet (index into the de-duplicated list) ending here.
    leaf: Option<usize>,
}

impl Trie {
    pub fn build(subnets: &[SubnetId]) -> Trie {
        let mut t = Trie {
            nodes: vec![Node::default()],
        };
        for (k, s) in subnets.iter().enumerate() {
            let mut at = 0;
            for b in s.branches() {
                let found = t.nodes[at]
                    .children
                    .iter()
                    .copied()
                    .find(|&c| t.nodes[c].branch == Some(*b));
                at = match found {
                    Some(c) => c,
                    None => {
                        t.nodes.push(Node {
                            branch: Some(*b),
                            ..Node::default()
                        });
                        let c = t.nodes.len() - 1;
                        t.nodes[at].children.push(c);
                        c
                    }
                };
            }
            t.nodes[at].leaf = Some(k);
        }
        t
    }

    /// Branch runs per batch (the stem and heads not counted).
    pub fn branch_runs(&self) -> usize {
        self.nodes.len() - 1
    }
}

/// Counts of how much work a prefix tree saves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    /// Part runs per batch with the tree (stem + branches + heads).
    pub tree: usize,
    /// Part runs per batch evaluated one subnet at a time.
    pub naive: usize,
}

/// Per-subnet result of an evaluation over some batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    pub correct: u64,
    pub seen: u64,
}

impl Score {
    pub fn accuracy(&self) -> f64 {
        if self.seen == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.seen as f64
        }
    }
    pub fn add(&mut self, o: Score) {
        self.correct += o.correct;
        self.seen += o.seen;
    }
}

/// Evaluates subnets on one data set.
pub struct Evaluator {
    pub plans: SpanPlans,
    inputs: Vec<Tensor>,
    /// Real rows of each batch.
    rows: Vec<usize>,
    /// Per item: the label, or the oracle path's top-1 when unlabelled.
    reference: Vec<i64>,
    pub labelled: bool,
    pub threads: usize,
    cache_bound: usize,
    /// Progress reports: distinct subnets evaluated of those expected.
    progress: Option<ProgressHook>,
    expected: AtomicU64,
}

impl Evaluator {
    /// Compile the parts at `batch` and cut `data` into batches. Without
    /// labels, the oracle path's predictions become the reference.
    pub fn new(net: &Supernet, data: &Dataset, batch: usize, threads: usize) -> Result<Evaluator> {
        if data.item_shape != net.item_shape {
            return Err(invalid!(
                "the data items have shape {:?} but the bundle's input `{}` takes {:?}",
                data.item_shape,
                net.manifest.input.name,
                net.item_shape
            ));
        }
        if data.is_empty() {
            return Err(invalid!("the data set is empty"));
        }
        let batch = batch.clamp(1, data.len());
        let facts = net.facts(batch)?;
        let plans = net.span_plans(&facts)?;
        Evaluator::with_plans(net, data, plans, threads)
    }

    /// As [`Evaluator::new`], reusing compiled plans (their batch size).
    pub fn with_plans(
        net: &Supernet,
        data: &Dataset,
        plans: SpanPlans,
        threads: usize,
    ) -> Result<Evaluator> {
        let batch = plans.batch;
        let k: usize = data.item_shape.iter().product();
        let mut inputs = Vec::new();
        let mut rows = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let n = batch.min(data.len() - start);
            let mut buf = vec![0f32; batch * k];
            buf[..n * k].copy_from_slice(&data.data[start * k..(start + n) * k]);
            let mut shape = vec![batch];
            shape.extend(&data.item_shape);
            inputs.push(Tensor::from_shape(&shape, &buf)?);
            rows.push(n);
            start += n;
        }
        let cuts: usize = (0..=net.num_blocks()).map(|i| net.cut_len(i)).sum();
        let largest = (0..=net.num_blocks())
            .map(|i| net.cut_len(i))
            .max()
            .unwrap_or(0);
        let threads = threads.max(1);
        let mut ev = Evaluator {
            plans,
            inputs,
            rows,
            reference: Vec::new(),
            labelled: data.labels.is_some(),
            threads,
            cache_bound: threads * batch * (cuts + largest) * 4,
            progress: None,
            expected: AtomicU64::new(0),
        };
        ev.reference = match &data.labels {
            Some(l) => l.clone(),
            None => {
                let oracle = net.oracle();
                let preds = ev.predictions(std::slice::from_ref(&oracle), 0..ev.batches())?;
                preds[0].iter().map(|&p| p as i64).collect()
            }
        };
        Ok(ev)
    }

    /// Number of batches.
    pub fn batches(&self) -> usize {
        self.inputs.len()
    }

    pub fn batch_size(&self) -> usize {
        self.plans.batch
    }

    /// Items in `batches`.
    pub fn items(&self, batches: Range<usize>) -> usize {
        self.rows[batches].iter().sum()
    }

    /// Upper bound of the memory held by cached cut tensors, bytes.
    /// Report progress to `hook` (distinct subnets evaluated).
    pub fn set_progress(&mut self, hook: Option<ProgressHook>) {
        self.progress = hook;
    }

    /// The strategy will evaluate about `n` distinct subnets.
    pub fn expect_subnets(&self, n: u64) {
        self.expected.store(n, Ordering::Relaxed);
        progress::report(&self.progress, Phase::Evaluate, 0, n);
    }

    /// `done` distinct subnets are evaluated.
    pub fn evaluated_subnets(&self, done: u64) {
        let total = self.expected.load(Ordering::Relaxed).max(done);
        progress::report(&self.progress, Phase::Evaluate, done, total);
    }

    pub fn cache_bound_bytes(&self) -> usize {
        self.cache_bound
    }

    /// Work per batch with a tree over `subnets` vs one subnet at a time.
    pub fn work(subnets: &[SubnetId]) -> Work {
        let uniq = dedup(subnets).0;
        let trie = Trie::build(&uniq);
        Work {
            tree: 1 + trie.branch_runs() + uniq.len(),
            naive: uniq.iter().map(|s| s.branches().len() + 2).sum(),
        }
    }

    /// Walk `trie` over batch `b`, calling `leaf(subnet, logits)`.
    fn walk(
        &self,
        trie: &Trie,
        b: usize,
        leaf: &mut dyn FnMut(usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        let c0 = self.plans.stem.run(self.inputs[b].clone())?;
        self.visit(trie, 0, c0, leaf)
    }

    fn visit(
        &self,
        trie: &Trie,
        node: usize,
        x: Tensor,
        leaf: &mut dyn FnMut(usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        let n = &trie.nodes[node];
        // Every consumer but the last gets a copy; the last consumes `x`, so
        // no copy outlives its use.
        let consumers = n.children.len() + usize::from(n.leaf.is_some());
        let mut x = Some(x);
        let mut served = 0;
        let mut next_input = |x: &mut Option<Tensor>| -> Result<Tensor> {
            served += 1;
            let t = if served == consumers {
                x.take()
            } else {
                x.clone()
            };
            t.ok_or_else(|| invalid!("prefix tree: the cut tensor was already consumed"))
        };
        if let Some(k) = n.leaf {
            let input = next_input(&mut x)?;
            leaf(k, self.plans.head.run(input)?)?;
        }
        for &c in &n.children {
            let branch = trie.nodes[c]
                .branch
                .ok_or_else(|| invalid!("prefix tree: node {c} has no branch"))?;
            let input = next_input(&mut x)?;
            let y = self.plans.branch(&branch)?.run(input)?;
            self.visit(trie, c, y, leaf)?;
        }
        Ok(())
    }

    /// Run `per_batch` for every batch of `batches` on the worker threads.
    fn parallel<T: Send>(
        &self,
        batches: Range<usize>,
        per_batch: &(dyn Fn(usize) -> Result<T> + Sync),
    ) -> Result<Vec<(usize, T)>> {
        let next = AtomicUsize::new(batches.start);
        let out = Mutex::new(Vec::new());
        let err: Mutex<Option<SearchError>> = Mutex::new(None);
        // A worker never panics while holding a lock (it only pushes), so a
        // poisoned lock still holds consistent data.
        fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap_or_else(|e| e.into_inner())
        }
        std::thread::scope(|s| {
            for _ in 0..self.threads.min(batches.len()).max(1) {
                s.spawn(|| loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches.end || lock(&err).is_some() {
                        break;
                    }
                    match per_batch(b) {
                        Ok(v) => lock(&out).push((b, v)),
                        Err(e) => {
                            *lock(&err) = Some(e);
                            break;
                        }
                    }
                });
            }
        });
        if let Some(e) = err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        let mut v = out.into_inner().unwrap_or_else(|e| e.into_inner());
        v.sort_by_key(|(b, _)| *b);
        Ok(v)
    }

    /// Top-1 predictions of every subnet on every item of `batches`
    /// (prefix tree), indexed like `subnets`.
    pub fn predictions(
        &self,
        subnets: &[SubnetId],
        batches: Range<usize>,
    ) -> Result<Vec<Vec<u16>>> {
        let (uniq, map) = dedup(subnets);
        let trie = Trie::build(&uniq);
        let per = self.parallel(batches, &|b| {
            let mut preds = vec![Vec::new(); uniq.len()];
            self.walk(&trie, b, &mut |k, logits| {
                preds[k] = argmax_rows(&logits)?[..self.rows[b]]
                    .iter()
                    .map(|&p| p as u16)
                    .collect();
                Ok(())
            })?;
            Ok(preds)
        })?;
        let mut all = vec![Vec::new(); uniq.len()];
        for (_, preds) in per {
            for (k, p) in preds.into_iter().enumerate() {
                all[k].extend(p);
            }
        }
        Ok(map.iter().map(|&k| all[k].clone()).collect())
    }

    /// Scores of every subnet on `batches` (prefix tree).
    pub fn evaluate(&self, subnets: &[SubnetId], batches: Range<usize>) -> Result<Vec<Score>> {
        let (uniq, map) = dedup(subnets);
        let trie = Trie::build(&uniq);
        let per = self.parallel(batches, &|b| {
            let mut scores = vec![Score::default(); uniq.len()];
            self.walk(&trie, b, &mut |k, logits| {
                scores[k] = self.score(b, &logits)?;
                Ok(())
            })?;
            Ok(scores)
        })?;
        let mut total = vec![Score::default(); uniq.len()];
        for (_, scores) in per {
            for (t, s) in total.iter_mut().zip(scores) {
                t.add(s);
            }
        }
        Ok(map.iter().map(|&k| total[k]).collect())
    }

    /// Scores computed one subnet at a time (no prefix sharing).
    pub fn evaluate_naive(
        &self,
        subnets: &[SubnetId],
        batches: Range<usize>,
    ) -> Result<Vec<Score>> {
        let mut out = Vec::with_capacity(subnets.len());
        for s in subnets {
            out.push(self.evaluate(std::slice::from_ref(s), batches.clone())?[0]);
        }
        Ok(out)
    }

    /// Logits of every subnet on batch `b`, with the tree or one at a time
    /// (for exactness checks).
    pub fn logits(&self, subnets: &[SubnetId], b: usize, tree: bool) -> Result<Vec<Tensor>> {
        if !tree {
            let mut out = Vec::new();
            for s in subnets {
                out.extend(self.logits(std::slice::from_ref(s), b, true)?);
            }
            return Ok(out);
        }
        let (uniq, map) = dedup(subnets);
        let trie = Trie::build(&uniq);
        let mut got: Vec<Option<Tensor>> = vec![None; uniq.len()];
        self.walk(&trie, b, &mut |k, logits| {
            got[k] = Some(logits);
            Ok(())
        })?;
        map.iter()
            .map(|&k| {
                got[k]
                    .clone()
                    .ok_or_else(|| invalid!("no logits for a subnet"))
            })
            .collect()
    }

    fn score(&self, b: usize, logits: &Tensor) -> Result<Score> {
        let preds = argmax_rows(logits)?;
        let start = b * self.plans.batch;
        let n = self.rows[b];
        let correct = preds[..n]
            .iter()
            .zip(&self.reference[start..start + n])
            .filter(|(p, r)| **p as i64 == **r)
            .count();
        Ok(Score {
            correct: correct as u64,
            seen: n as u64,
        })
    }
}

/// Distinct subnets, and for each input the index of its distinct copy.
fn dedup(subnets: &[SubnetId]) -> (Vec<SubnetId>, Vec<usize>) {
    let mut seen: HashMap<&SubnetId, usize> = HashMap::new();
    let mut uniq = Vec::new();
    let mut map = Vec::with_capacity(subnets.len());
    for s in subnets {
        let k = *seen.entry(s).or_insert_with(|| {
            uniq.push(s.clone());
            uniq.len() - 1
        });
        map.push(k);
    }
    (uniq, map)
}
