//! The HTTP server: the KServe v2 / Open Inference Protocol routes, the
//! adaptation status and Prometheus metrics, on TCP or a Unix socket.
//! Inference runs on the bounded [`pool::WorkerPool`], never on the async
//! threads. [`Bound::serve`] runs the accept loop of [`conn`] (connection
//! cap, header and idle timeouts) with the request-body budget of [`limits`].

pub mod codec;
pub mod conn;
pub mod limits;
pub mod page;
pub mod pool;
pub mod triton;
pub mod v2;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::{Listen, Server};
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
/// The HTTP runtime's beat ([`crate::liveness::Thread::Http`]): a task on
/// the same runtime as the connections, so a runtime whose threads are all
/// stuck stops beating.
pub async fn beat(shared: Arc<Shared>) {
    let period = std::time::Duration::from_secs(1);
    loop {
        shared.liveness.beat(crate::liveness::Thread::Http, period);
        tokio::time::sleep(period).await;
    }
}

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
    Unix(tokio::net::UnixListener, UnixSocket),
}

/// A Unix socket this daemon owns: its path, the lock held beside it
/// (`PATH.lock`) and the socket file's identity (removed on exit only if
/// it is still this one).
pub struct UnixSocket {
    pub path: std::path::PathBuf,
    _lock: std::fs::File,
    id: (u64, u64),
}

/// The mode of the Unix socket: the service's user and group.
pub const UNIX_SOCKET_MODE: u32 = 0o660;

impl Bound {
    /// Bind `listen`. A Unix socket is created with mode 0660 whatever the
    /// umask; a live one (another daemon holds its lock, or answers on it)
    /// is never taken over: that is an error naming the socket. A stale
    /// socket file (no listener) is replaced.
    pub async fn bind(listen: &Listen) -> std::io::Result<Bound> {
        match listen {
            Listen::Tcp(addr) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            Listen::Unix(path) => {
                let (l, socket) = bind_unix(path)?;
                Ok(Bound::Unix(l, socket))
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
            Bound::Unix(_, s) => format!("unix:{}", s.path.display()),
        }
    }

    /// Serve `app` with the limits of `server` and the request-bytes
    /// `budget` (shared with gRPC) until `shutdown` completes; requests in
    /// progress then get up to `server.body_timeout_s` to finish.
    pub async fn serve(
        self,
        app: Router,
        server: &Server,
        budget: limits::Limits,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let secs = std::time::Duration::from_secs_f64;
        let app = app.layer(axum::middleware::from_fn_with_state(budget, limits::guard));
        let cl = conn::ConnLimits {
            max_connections: server.max_connections,
            header_timeout: secs(server.header_timeout_s),
            idle_timeout: secs(server.idle_timeout_s),
            shutdown_grace: secs(server.body_timeout_s),
        };
        match self {
            Bound::Tcp(l) => conn::serve(l, app, cl, shutdown).await,
            Bound::Unix(l, socket) => {
                let path = socket.path.clone();
                conn::serve(l, app, cl, async move {
                    shutdown.await;
                    // Clients get "no such file" at once while requests finish.
                    socket.remove();
                })
                .await;
                log::debug!("unix socket {} closed", path.display());
            }
        }
        Ok(())
    }
}

fn in_use(path: &std::path::Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!(
            "unix socket {} is in use ({why}): another adaptived serves on it; refusing to start",
            path.display()
        ),
    )
}

/// Bind a Unix socket at `path` (see [`Bound::bind`]): lock `PATH.lock`,
/// refuse a live socket, bind under a temporary name, set the mode, rename
/// into place (so the path never has a wider mode).
fn bind_unix(path: &std::path::Path) -> std::io::Result<(tokio::net::UnixListener, UnixSocket)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("unix socket path {} has no file name", path.display()),
        )
    })?;
    let sibling = |suffix: &str, prefix: &str| {
        let mut n = std::ffi::OsString::from(prefix);
        n.push(name);
        n.push(suffix);
        path.with_file_name(n)
    };
    let lock_path = sibling(".lock", "");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", lock_path.display())))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(in_use(path, &format!("{} is locked", lock_path.display())))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot lock {}: {e}", lock_path.display()),
            ))
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(in_use(path, "a process accepts connections on it"));
            }
            log::info!("replacing the stale unix socket {}", path.display());
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp = sibling(&format!(".{}.tmp", std::process::id()), ".");
    let _ = std::fs::remove_file(&tmp);
    fn bind_as(
        tmp: &std::path::Path,
        path: &std::path::Path,
    ) -> std::io::Result<std::os::unix::net::UnixListener> {
        use std::os::unix::fs::PermissionsExt;
        let l = std::os::unix::net::UnixListener::bind(tmp)?;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(UNIX_SOCKET_MODE))?;
        std::fs::rename(tmp, path)?;
        Ok(l)
    }
    let l = match bind_as(&tmp, path) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let meta = std::fs::symlink_metadata(path)?;
    l.set_nonblocking(true)?;
    let l = tokio::net::UnixListener::from_std(l)?;
    Ok((
        l,
        UnixSocket {
            path: path.to_path_buf(),
            _lock: lock,
            id: (meta.dev(), meta.ino()),
        },
    ))
}

impl UnixSocket {
    /// Remove the socket file if it is still the one this daemon bound.
    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
