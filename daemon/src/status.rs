//! What `/adaptation`, `/metrics` and the log show of the daemon, as plain
//! data: rejected bundles, swaps, the search's state, the adaptation loop's
//! decisions, latency table, compiled subnets and reloads. Every part of the
//! daemon writes here through [`crate::shared::Shared`]; the server only
//! reads. Kinds are enums so that the metrics list every label.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::monitor::Environment;

/// How many rejected bundles and swaps `/adaptation` keeps.
pub const HISTORY: usize = 50;

/// Decisions kept for `/adaptation`.
pub const DECISIONS: usize = 100;

/// A bundle that was refused.
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub file: String,
    pub reason: String,
    pub time: String,
}

/// A change of the served model.
#[derive(Clone, Debug, Serialize)]
pub struct Swap {
    pub time: String,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
}

/// What the search thread is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchState {
    #[default]
    Idle,
    Running,
    Failed,
}

/// The search thread's state and the bundle it is about.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SearchStatus {
    pub state: SearchState,
    /// The bundle being (or last) searched.
    pub bundle_sha256: Option<String>,
    pub message: Option<String>,
    /// Where a running search is (none when idle).
    pub progress: Option<SearchProgress>,
}

/// A running search's progress, as `/adaptation` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SearchProgress {
    pub phase: adaptivenet_search::Phase,
    /// The phase in words.
    pub doing: String,
    pub done: u64,
    pub total: u64,
    /// `done / total` in percent.
    pub percent: f64,
    /// Seconds since the search started.
    pub elapsed_s: f64,
    /// Seconds left in the evaluation, estimated from its pace so far.
    pub eta_s: Option<f64>,
}

/// Intake and search history.
#[derive(Debug, Default)]
pub struct History {
    pub rejected: VecDeque<Rejected>,
    pub swaps: VecDeque<Swap>,
    pub search: SearchStatus,
    pub intake: IntakeStatus,
}

/// Which installed copy of the bundle is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The newest installed bundle (`active.bundle`).
    #[default]
    Active,
    /// The one installed before it (`previous.bundle`): the active one
    /// failed its checks at start.
    Previous,
}

/// The health of bundle intake, for `/adaptation` (`intake`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct IntakeStatus {
    /// The slot served since the last start.
    pub slot: Slot,
    /// Why the previous slot is served (when it is).
    pub fallback_reason: Option<String>,
    /// Starts that fell back to the previous slot (this process: 0 or 1).
    pub fallbacks: u64,
    /// The highest version ever installed (the downgrade floor).
    pub version_floor: Option<u64>,
    /// Panics of the supervised threads (watcher, adapt, search), each followed
    /// by a restart of the thread.
    pub thread_restarts: u64,
    /// The last such panic: `thread: message`.
    pub last_panic: Option<String>,
}

/// Why the adaptation loop acted (or noted something).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Over budget: down the front at once.
    OverBudget,
    /// Sustained slack: up the front.
    Slack,
    /// The budget changed (config reload).
    BudgetChange,
    /// The served subnet is not on the front: the best point that fits.
    RejoinFront,
    /// No front point fits even the fastest.
    NoFit,
    /// The board started throttling: the front was re-timed.
    RetimeThrottle,
    /// The board stopped throttling: the front was re-timed.
    RetimeRecovered,
    /// CPUs went offline or came back: the front was re-timed.
    RetimeCores,
    /// The CPU clock moved: the front was re-timed.
    RetimeClock,
    /// A config reload was put in force.
    ConfigReload,
    /// A config reload was refused; the old config stays.
    ConfigRejected,
    /// A subnet could not be built; nothing changed.
    Error,
}

impl DecisionKind {
    /// Every kind, for the metrics' label list.
    pub const ALL: [DecisionKind; 12] = [
        DecisionKind::OverBudget,
        DecisionKind::Slack,
        DecisionKind::BudgetChange,
        DecisionKind::RejoinFront,
        DecisionKind::NoFit,
        DecisionKind::RetimeThrottle,
        DecisionKind::RetimeRecovered,
        DecisionKind::RetimeCores,
        DecisionKind::RetimeClock,
        DecisionKind::ConfigReload,
        DecisionKind::ConfigRejected,
        DecisionKind::Error,
    ];

    /// The label in logs, JSON and metrics.
    pub fn label(self) -> &'static str {
        match self {
            DecisionKind::OverBudget => "over_budget",
            DecisionKind::Slack => "slack",
            DecisionKind::BudgetChange => "budget_change",
            DecisionKind::RejoinFront => "rejoin_front",
            DecisionKind::NoFit => "no_fit",
            DecisionKind::RetimeThrottle => "retime_throttle",
            DecisionKind::RetimeRecovered => "retime_recovered",
            DecisionKind::RetimeCores => "retime_cores",
            DecisionKind::RetimeClock => "retime_clock",
            DecisionKind::ConfigReload => "config_reload",
            DecisionKind::ConfigRejected => "config_rejected",
            DecisionKind::Error => "error",
        }
    }
}

impl std::fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One adaptation decision.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub time: String,
    pub unix_ms: u64,
    pub kind: DecisionKind,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// A row of the latency table as the policy uses it.
#[derive(Clone, Debug, Serialize)]
pub struct TableRow {
    pub subnet: String,
    /// The table's predicted latency (re-timed when `retimed`), ms.
    pub predicted_ms: f64,
    /// The search's prediction, ms.
    pub search_ms: f64,
    pub accuracy: f64,
    /// predicted x slowdown, ms.
    pub estimate_ms: f64,
    pub fits: bool,
}

/// Compiled subnets kept in memory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlansStatus {
    pub resident: Vec<String>,
    pub approx_mb: f64,
    pub budget_mb: u64,
    /// Compiled subnets dropped to stay within the budget.
    pub dropped: u64,
}

/// Config reloads (SIGHUP).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    pub ok: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub last: Option<String>,
}

/// What `/adaptation` and `/metrics` show of the adaptation loop.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AdaptStatus {
    pub environment: Environment,
    /// The budget in force, ms (the config's, at `percentile`).
    pub budget_ms: Option<f64>,
    pub percentile: f64,
    /// The slowdown applied to the table (max of contention and hardware factor).
    pub slowdown: Option<f64>,
    pub table: Vec<TableRow>,
    /// `search` or `retimed`.
    pub table_source: String,
    pub retimed_at: Option<String>,
    pub decisions: VecDeque<Decision>,
    /// Decisions by kind since the start.
    pub counts: BTreeMap<DecisionKind, u64>,
    pub plans: PlansStatus,
    pub reloads: ReloadStatus,
}
