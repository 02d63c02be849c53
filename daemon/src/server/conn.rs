//! The accept loop and each connection's life: HTTP/1.1 over hyper with a
//! cap on connections served at once (`server.max_connections`), a header
//! timeout (`server.header_timeout_s`, from a request head's first byte), an
//! idle timeout (`server.idle_timeout_s`, no request in progress and no byte
//! of a new one) and a graceful shutdown.
//!
//! Past the cap, a new connection closes the oldest connection that has no
//! request in progress (idle keep-alive, a fresh connection that has not
//! sent a complete head, a slow header writer); when every connection has a
//! request in progress the new one waits, unanswered in the kernel's
//! backlog, until one ends or goes idle. So a flood of idle connections can
//! neither exhaust file descriptors nor lock out a client with a request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The connection limits (from `config::Server`).
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a shutdown waits for requests in progress.
    pub shutdown_grace: Duration,
}

/// Sockets of evicted connections that may still be open while the accept
/// loop takes new ones (on top of `max_connections`).
const EVICTION_SLACK: usize = 4;

/// A listener the accept loop can take connections from.
pub trait Listener {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Io> {
        let (s, _) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// What the accept loop and a connection's task share about it.
struct Conn {
    id: u64,
    /// Requests in progress (until their response body is sent).
    busy: AtomicUsize,
    timing: Mutex<Timing>,
    /// Set once the accept loop chose it to make room.
    evicted: AtomicBool,
    /// Wakes the connection's task: its timing changed, or it was evicted.
    wake: Notify,
}

#[derive(Clone, Copy)]
struct Timing {
    /// Since when no request is in progress (`None`: one is).
    idle_since: Option<Instant>,
    /// When the first byte of the next request head arrived.
    head_started: Option<Instant>,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, Timing> {
        self.timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// When it must close if nothing changes (`None`: a request is in progress).
    fn deadline(&self, l: &ConnLimits) -> Option<Instant> {
        let t = *self.lock();
        match (t.idle_since, t.head_started) {
            (None, _) => None,
            (Some(_), Some(head)) => Some(head + l.header_timeout),
            (Some(idle), None) => Some(idle + l.idle_timeout),
        }
    }

    fn on_read(&self) {
        if !self.is_idle() {
            return;
        }
        let mut t = self.lock();
        if t.idle_since.is_some() && t.head_started.is_none() {
            t.head_started = Some(Instant::now());
            drop(t);
            self.wake.notify_one();
        }
    }

    fn begin_request(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        *self.lock() = Timing {
            idle_since: None,
            head_started: None,
        };
        Busy(self.clone())
    }
}

/// A request in progress on a connection; dropped with its response body.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.lock() = Timing {
                idle_since: Some(Instant::now()),
                head_started: None,
            };
            self.0.wake.notify_one();
        }
    }
}

/// The live connections, oldest first, and a signal when one ends or idles.
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    changed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections not already told to close.
    fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|c| !c.evicted.load(Ordering::Acquire))
            .count()
    }

    /// Tell the oldest idle connection to close; false when none is idle.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.lock();
        for c in conns.values() {
            if c.is_idle() && !c.evicted.swap(true, Ordering::AcqRel) {
                log::debug!("connection {}: closed to make room", c.id);
                c.wake.notify_one();
                return true;
            }
        }
        false
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }
}

/// The stream, telling its connection when bytes arrive.
struct Watched<S> {
    io: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serve `app` on `listener` until `shutdown` completes, then stop
/// accepting, let requests in progress finish (at most
/// `limits.shutdown_grace`) and return.
pub async fn serve<L: Listener>(
    listener: L,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The header and idle timeouts are this module's (hyper's header
        // timer also runs while a keep-alive connection idles).
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(64 << 10);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    let mut next_id = 0u64;
    'accept: loop {
        // An evicted connection closes its socket on its own task, a little
        // later: accept nothing while `EVICTION_SLACK` such sockets are
        // still open, so a burst of connects cannot run the process out of
        // file descriptors while they close.
        loop {
            let changed = registry.changed.notified();
            if registry.lock().len() < limits.max_connections + EVICTION_SLACK {
                break;
            }
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let io = tokio::select! {
            _ = &mut shutdown => break 'accept,
            r = listener.accept_one() => match r {
                Ok(io) => io,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning;
                    // a connection reset before accept: go on.
                    if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        next_id += 1;
        let conn = Arc::new(Conn {
            id: next_id,
            busy: AtomicUsize::new(0),
            timing: Mutex::new(Timing {
                idle_since: Some(Instant::now()),
                head_started: None,
            }),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        // Make room before serving the newcomer.
        loop {
            let changed = registry.changed.notified();
            if registry.live() < limits.max_connections || registry.evict_oldest_idle() {
                break;
            }
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                _ = changed => {}
                // A connection that went idle does not end; look again.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        registry.lock().insert(conn.id, conn.clone());
        let app = app.clone();
        let (builder, registry, stop) = (builder.clone(), registry.clone(), stop_rx.clone());
        tokio::spawn(async move {
            run_connection(io, app, &builder, conn.clone(), limits, stop).await;
            registry.remove(conn.id);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + limits.shutdown_grace;
    loop {
        let changed = registry.changed.notified();
        let left = registry.lock().len();
        if left == 0 {
            break;
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {
                log::warn!("shutdown: {left} connection(s) still open after {:?}; closing them", limits.shutdown_grace);
                break;
            }
        }
    }
}

async fn run_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    app: Router,
    builder: &http1::Builder,
    conn: Arc<Conn>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let tower = TowerToHyperService::new(app);
    let tracker = conn.clone();
    let service = hyper::service::service_fn(move |req: axum::http::Request<Incoming>| {
        let busy = tracker.begin_request();
        let fut = hyper::service::Service::call(&tower, req);
        async move {
            let response = fut.await?;
            // The request is in progress until its response body is sent.
            Ok::<_, Infallible>(response.map(|b| {
                Body::new(Tracked {
                    inner: b,
                    _busy: busy,
                })
            }))
        }
    });
    let io = TokioIo::new(Watched {
        io,
        conn: conn.clone(),
    });
    let c = builder.serve_connection(io, service);
    tokio::pin!(c);
    let mut stopping = *stop.borrow();
    if stopping {
        return;
    }
    loop {
        let deadline = conn.deadline(&limits);
        let wake = conn.wake.notified();
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    log::debug!("connection {}: {e}", conn.id);
                }
                return;
            }
            _ = wake => {
                if conn.evicted.load(Ordering::Acquire) {
                    if conn.is_idle() {
                        return;
                    }
                    c.as_mut().graceful_shutdown();
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if conn.is_idle() {
                    return;
                }
                c.as_mut().graceful_shutdown();
            }
            _ = sleep_until_opt(deadline) => {
                if conn.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    log::debug!("connection {}: closed (idle or header timeout)", conn.id);
                    return;
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
