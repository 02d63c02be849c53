//! The KServe v2 gRPC endpoint (`grpc_listen`): health, server and model
//! metadata, infer with raw or typed contents, classification, and Triton's
//! model configuration and statistics, so stock Triton/KServe gRPC clients
//! work with their defaults. Requests share everything with HTTP: the
//! served model, the worker pool and its queue, the request-bytes budget
//! (`server.max_inflight_mb`), the checks, the metrics and the statistics.
//!
//! The messages and the service trait are generated from
//! `daemon/proto/inference.proto` into [`pb`] (committed; regenerate with
//! `cargo run -p adaptivenet-tests --bin gen-grpc`).

#[rustfmt::skip]
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::all,
    unused_qualifications
)]
pub mod pb;

mod service;

use std::future::Future;
use std::time::Duration;

use tonic::transport::server::TcpIncoming;

use crate::config::Server;
use crate::server::limits::Limits;
use crate::server::{AppState, BODY_LIMIT};
use pb::grpc_inference_service_server::GrpcInferenceServiceServer;
pub use service::Inference;

/// Streams (requests) one connection may have open at once; with the
/// connection cap this bounds the messages being received.
const STREAMS_PER_CONNECTION: u32 = 8;

/// Serve gRPC on `listener` until `shutdown` completes. Messages larger
/// than the HTTP body limit are refused by tonic before they are buffered
/// whole; a request's whole time is bounded by `server.body_timeout_s`
/// plus the time it waits for and runs on a worker.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: Limits,
    server: &Server,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let svc = GrpcInferenceServiceServer::new(Inference::new(state, limits))
        .max_decoding_message_size(BODY_LIMIT)
        .max_encoding_message_size(BODY_LIMIT);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let idle = Duration::from_secs_f64(server.idle_timeout_s);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(STREAMS_PER_CONNECTION as usize)
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(idle))
        .http2_keepalive_timeout(Some(Duration::from_secs_f64(server.header_timeout_s)))
        .timeout(Duration::from_secs_f64(
            server.body_timeout_s + server.idle_timeout_s,
        ))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
