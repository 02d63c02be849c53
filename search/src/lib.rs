//! `adaptivenet-search`: the on-device search of a supernet bundle
//! (DESIGN.md, "Device side: search"), as a library the daemon and its CLI
//! call.
//!
//! 1. **Latency table** ([`latency`]): every branch, the stem and the head
//!    compiled as their own batch-1 tract plans and timed on real cut
//!    tensors; a subnet's predicted latency is stem + its branches + head,
//!    checked against whole-subnet timings.
//! 2. **Accuracy** ([`Evaluator`]): top-1 on local labelled data (agreement
//!    with the oracle path when unlabelled), a population evaluated as a
//!    prefix tree.
//! 3. **Strategy** ([`strategy`]): exhaustive evaluation when the space fits
//!    the evaluation budget, else the paper's evolutionary search with a
//!    local search around the front; both return the Pareto front of
//!    [`FrontPoint`]s.
//! 4. **Result and cache** ([`SearchResult`], [`cache`]): one record per
//!    (bundle sha256, device fingerprint), stored atomically under the state
//!    directory; [`report`]: table, JSON and (feature `chart`) SVG.
//!
//! [`search`] runs or loads the whole pipeline; [`oracle_only`] is the
//! search without local data.

mod accuracy;
pub mod cache;
mod error;
mod fingerprint;
mod front;
pub mod latency;
mod pipeline;
pub mod progress;
pub mod report;
pub mod strategy;
mod supernet;

pub use accuracy::{Evaluator, Score, Trie};
pub use adaptivenet_onnx::SplitMix as Rng;
pub use cache::{CacheKey, CacheMiss, SearchResult};
pub use error::{Result, SearchError};
pub use fingerprint::{device as device_fingerprint, fingerprint};
pub use front::{choose, dominates, pareto_front, ranks, Choice, FrontPoint};
pub use latency::{LatencyTable, PredictionCheck, TimingOptions};
pub use pipeline::{oracle_only, search, Chosen, Options, Searched};
pub use progress::{Phase, Progress, ProgressHook};
pub use strategy::{Outcome, PhaseSeconds, SearchParams, StrategyKind};
pub use supernet::{SpanPlans, Supernet};
