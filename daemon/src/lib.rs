//! `adaptived`, the on-device daemon of adaptivenet: it watches a directory
//! for signed supernet bundles, verifies and installs them, searches the best
//! subnet for this device in the background (see [`search_api`]), and serves
//! it over the KServe v2 / Open Inference Protocol with hot swaps.

pub mod adapt;
pub mod client;
pub mod config;
pub mod demo;
pub mod engine;
pub mod monitor;
pub mod policy;
pub mod search;
pub mod search_api;
pub mod server;
pub mod service;
pub mod shared;
pub mod state;
pub mod watcher;
