//! `adaptived`, the on-device daemon of adaptivenet: it watches a folder
//! for signed supernet bundles, verifies and installs them, searches the
//! best subnet for this device in the background (with `adaptivenet-search`),
//! serves it over the KServe v2 / Open Inference Protocol, and adapts the
//! served subnet to the board's conditions with atomic hot swaps.
//!
//! Modules, from the bottom up (none imports one above it):
//! - [`clock`], [`config`], [`status`] (plain data shown by the API),
//!   [`monitor`] (board conditions), [`engine`] (a compiled subnet),
//!   [`policy`] (which front point to serve), [`metrics`];
//! - [`state`] (the state folder), [`shared`] (what the threads share);
//! - [`progress`] (the search's progress in status and log);
//! - [`service`] (bundle lifecycle and search thread), [`watcher`] (the
//!   drop folder), [`adapt`] (the adaptation loop), [`server`] (HTTP),
//!   [`systemd`] (notifications and signals), [`demo`] (`--demo`).

pub mod adapt;
pub mod clock;
pub mod config;
pub mod demo;
pub mod engine;
pub mod grpc;
pub mod intake;
pub mod liveness;
pub mod metrics;
pub mod monitor;
pub mod policy;
pub mod progress;
pub mod server;
pub mod service;
pub mod shared;
pub mod state;
pub mod status;
pub mod supervise;
pub mod systemd;
pub mod watcher;
