//! The HTTP server: the KServe v2 / Open Inference Protocol routes, the
//! adaptation status and Prometheus metrics, on TCP or a Unix socket.
//! Inference runs on the bounded [`pool::WorkerPool`], never on the async
//! threads.

pub mod codec;
pub mod page;
pub mod pool;
pub mod triton;
pub mod v2;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Listen;
use crate::shared::Shared;
use pool::WorkerPool;

/// Largest request body accepted (a batch of 64 28x28 images as JSON text is
/// about 0.6 MB).
pub const BODY_LIMIT: usize = 16 << 20;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub pool: Arc<WorkerPool>,
    pub max_batch: usize,
    /// The budget's percentile (shown by `/adaptation`).
    pub percentile: f64,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::status_page))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/repository/index", post(v2::repository_index))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route("/v2/models/{name}/adaptation", get(v2::adaptation))
        .route("/v2/models/stats", get(triton::all_stats))
        .route("/v2/models/{name}/stats", get(triton::model_stats))
        .route("/v2/models/{name}/config", get(triton::model_config))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(triton::model_stats_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(triton::model_config_v),
        )
        .route(
            "/v2/repository/models/{name}/load",
            post(triton::repository_change),
        )
        .route(
            "/v2/repository/models/{name}/unload",
            post(triton::repository_change),
        )
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::model_metadata_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::model_ready_v),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::infer_v),
        )
        .route("/metrics", get(v2::metrics))
        .fallback(v2::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// A bound listener.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Bound {
    /// Bind `listen` (a stale Unix socket file is replaced).
    pub async fn bind(listen: &Listen) -> std::io::Result<Bound> {
        match listen {
            Listen::Tcp(addr) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            Listen::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    }
                }
                Ok(Bound::Unix(
                    tokio::net::UnixListener::bind(path)?,
                    path.clone(),
                ))
            }
        }
    }

    /// The address clients use (`http://127.0.0.1:8080` or `unix:/path`).
    pub fn url(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_else(|_| "http://?".into()),
            Bound::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// Serve `app` until `shutdown` completes.
    pub async fn serve(
        self,
        app: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Bound::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            Bound::Unix(l, path) => {
                let r = axum::serve(l, app).with_graceful_shutdown(shutdown).await;
                let _ = std::fs::remove_file(&path);
                r
            }
        }
    }
}
