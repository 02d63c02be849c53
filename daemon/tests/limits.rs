//! The server's limits against a real `adaptived` (loopback only, every
//! loop bounded): idle connections closed at the idle timeout while health
//! stays fast, slow header writers cut at the header timeout, connections
//! past the cap, stalled large bodies within the in-flight budget (RSS from
//! `/proc/PID/status`), a 256 file-descriptor limit, and the Unix socket
//! (mode 0660 under umask 000, never taken from a live daemon). The tests
//! run one at a time (they measure the daemon's memory and open files).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use adaptivenet_testkit::prelude::*;

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One health check on a new connection: (status, milliseconds).
fn health(addr: SocketAddr) -> (u16, f64) {
    let t = Instant::now();
    let r = Client::new(addr)
        .with_timeout(Duration::from_secs(10))
        .get("/v2/health/live");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (r.map(|r| r.status).unwrap_or(0), ms)
}

/// `n` health checks 50 ms apart: the worst time; all must answer 200.
fn worst_health(addr: SocketAddr, n: usize) -> f64 {
    let mut worst = 0.0f64;
    for _ in 0..n {
        let (status, ms) = health(addr);
        assert_eq!(status, 200, "health check failed after {ms:.1} ms");
        worst = worst.max(ms);
        std::thread::sleep(Duration::from_millis(50));
    }
    worst
}

fn connect_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect()
}

/// Has the server closed `s` (EOF or reset)? Data it sent is read and dropped.
fn closed_by_server(mut s: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Wait (bounded) until the server closed every stream; the time it took.
fn wait_all_closed(streams: &mut [TcpStream], within: Duration) -> Duration {
    let t = Instant::now();
    let mut open: Vec<usize> = (0..streams.len()).collect();
    while !open.is_empty() {
        open.retain(|&i| !closed_by_server(&streams[i]));
        assert!(
            t.elapsed() < within,
            "{} of {} connections still open after {within:?}",
            open.len(),
            streams.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

#[test]
fn idle_connections_are_closed_at_the_idle_timeout_and_health_stays_fast() {
    let _s = serial();
    let tmp = TempDir::new("idle");
    let d = Daemon::start(
        tmp.path(),
        "server:\n  max_connections: 400\n  idle_timeout_s: 2\n  header_timeout_s: 1\n",
    );
    let opened = Instant::now();
    let mut conns = connect_many(d.addr, 300);
    let worst = worst_health(d.addr, 10);
    println!("300 idle connections: worst health {worst:.1} ms");
    assert!(worst < 100.0, "worst health check {worst:.1} ms");
    let early = conns.iter_mut().filter(|s| closed_by_server(s)).count();
    let checked_at = opened.elapsed();
    wait_all_closed(&mut conns, Duration::from_secs(5));
    let since_open = opened.elapsed();
    println!(
        "{early} closed {checked_at:?} after opening; all 300 closed {since_open:?} after (idle timeout 2 s)"
    );
    // Held until the idle timeout (not cut early by the cap), then closed.
    if checked_at < Duration::from_millis(1800) {
        assert_eq!(early, 0, "closed before the idle timeout");
    }
    // The idle timeout plus 1.5 s for accepting 300 connections and polling
    // them on a loaded 2-core machine.
    assert!(since_open <= Duration::from_millis(3500), "{since_open:?}");
    assert_eq!(health(d.addr).0, 200);
}

#[test]
fn slow_header_writers_are_cut_at_the_header_timeout() {
    let _s = serial();
    let tmp = TempDir::new("slowloris");
    let d = Daemon::start(
        tmp.path(),
        "server:\n  header_timeout_s: 1\n  idle_timeout_s: 30\n",
    );
    let start = Instant::now();
    let mut conns = connect_many(d.addr, 20);
    for s in &mut conns {
        let _ = s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n");
    }
    // A header line every 100 ms, never the blank line that ends the head.
    let mut closed_at: Vec<Option<Duration>> = vec![None; conns.len()];
    while closed_at.iter().any(|c| c.is_none()) {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{} of 20 slow header writers still connected after 6 s (header timeout 1 s)",
            closed_at.iter().filter(|c| c.is_none()).count()
        );
        for (s, c) in conns.iter_mut().zip(closed_at.iter_mut()) {
            if c.is_none() {
                let _ = s.write_all(b"X-Slow: 1\r\n");
                if closed_by_server(s) {
                    *c = Some(start.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = closed_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default();
    println!("20 slow header writers cut; the last after {last:?} (header timeout 1 s)");
    assert!(last <= Duration::from_millis(2500), "{last:?}");
    assert_eq!(health(d.addr).0, 200);
}

#[test]
fn connections_past_the_cap_do_not_take_the_server_down() {
    let _s = serial();
    let tmp = TempDir::new("cap");
    let d = Daemon::start(
        tmp.path(),
        "server:\n  max_connections: 16\n  idle_timeout_s: 30\n  header_timeout_s: 30\n  body_timeout_s: 2\n",
    );
    let pid = d.child.id();
    let base = open_fds(pid);
    // 100 idle connections: the oldest idle ones make room.
    let conns = connect_many(d.addr, 100);
    let worst = worst_health(d.addr, 10);
    std::thread::sleep(Duration::from_millis(200));
    let fds = open_fds(pid);
    println!(
        "100 idle connections, cap 16: {base} -> {fds} open files, worst health {worst:.1} ms"
    );
    assert!(worst < 100.0, "worst health check {worst:.1} ms");
    assert!(fds <= base + 16 + 2, "{fds} open files (before: {base})");
    drop(conns);
    // 16 requests in progress (bodies that stop): a newcomer waits until the
    // body timeout frees a slot, then it is answered.
    let mut stalled = connect_many(d.addr, 16);
    for s in &mut stalled {
        s.set_nonblocking(false).expect("blocking");
        s.write_all(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inputs\":",
        )
        .expect("write");
    }
    std::thread::sleep(Duration::from_millis(200));
    let (status, ms) = health(d.addr);
    println!("16 stalled requests, cap 16: health {status} after {ms:.0} ms (body timeout 2 s)");
    assert_eq!(status, 200);
    assert!(ms < 4000.0, "{ms:.0} ms");
    let mut text = String::new();
    let _ = stalled[0].set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stalled[0].read_to_string(&mut text);
    assert!(
        text.starts_with("HTTP/1.1 408") && text.contains("server.body_timeout_s"),
        "{text}"
    );
    assert!(worst_health(d.addr, 3) < 100.0);
}

#[test]
fn stalled_large_bodies_stay_within_the_in_flight_budget() {
    let _s = serial();
    let tmp = TempDir::new("budget");
    let d = Daemon::start(
        tmp.path(),
        "server:\n  max_connections: 100\n  max_inflight_mb: 32\n  body_timeout_s: 3\n",
    );
    let pid = d.child.id();
    let addr = d.addr;
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(pid);
    const LEN: usize = 15 << 20;
    // 60 connections each declare 15 MiB and send all but the last MiB.
    let writers: Vec<_> = (0..60)
        .map(|_| {
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
                    return;
                };
                let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                let head = format!(
                    "POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 << 10];
                for _ in 0..(LEN - (1 << 20)) / chunk.len() {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                }
                // Never finished: hold the connection until the server ends it.
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            })
        })
        .collect();
    // While they are held: the budget is full, a new large request gets 503.
    let t = Instant::now();
    let mut during = before;
    let mut probe = String::new();
    while t.elapsed() < Duration::from_millis(2500) {
        during = during.max(rss_kb(pid));
        if probe.is_empty() && t.elapsed() > Duration::from_millis(1500) {
            let mut s = TcpStream::connect(addr).expect("connect");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            s.write_all(
                format!(
                    "POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("write");
            let _ = s.read_to_string(&mut probe);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in writers {
        let _ = w.join();
    }
    during = during.max(rss_kb(pid));
    // Every connection ended (503 at once, or 408 at the body timeout).
    let after = rss_kb(pid);
    println!(
        "RSS before {} MiB, during {} MiB, after {} MiB (budget 32 MiB, 60 x 15 MiB bodies)",
        before / 1024,
        during / 1024,
        after / 1024
    );
    assert!(
        probe.starts_with("HTTP/1.1 503") && probe.contains("server.max_inflight_mb = 32 MiB"),
        "{probe}"
    );
    assert!(
        during <= before + 80 * 1024,
        "RSS grew from {before} kB to {during} kB with a 32 MiB budget"
    );
    assert!(after <= during, "{after} kB after, {during} kB during");
    assert!(worst_health(addr, 3) < 100.0);
}

#[test]
fn with_256_file_descriptors_300_idle_connections_stop_neither_http_nor_intake() {
    let _s = serial();
    let tmp = TempDir::new("nofile");
    let d = Daemon::start_limited(tmp.path(), "", &[], 0, Some(256));
    let mut conns = connect_many(d.addr, 300);
    let worst = worst_health(d.addr, 10);
    println!(
        "RLIMIT_NOFILE 256, 300 idle connections: {} open files, worst health {worst:.1} ms",
        open_fds(d.child.id())
    );
    assert!(worst < 100.0, "worst health check {worst:.1} ms");
    drop_bundle(&d.bundle_dir, "fmnist-v3.bundle", &signed_bundle(3));
    d.wait_for("the bundle to serve", Duration::from_secs(60), |a| {
        served_version(a) == Some(3)
    });
    let log = d.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    let still_open = conns.iter_mut().filter(|s| !closed_by_server(s)).count();
    println!("{still_open} of the 300 still open (the newest, up to the cap)");
    assert!(still_open <= 64);
}

// ---------------------------------------------------------------------------
// The Unix socket
// ---------------------------------------------------------------------------

/// Start `adaptived` on `unix:SOCK` under umask 000; its log goes to `log`.
fn start_unix(root: &Path, sock: &Path, log: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let config = root.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "bundle_dir: {0}/b\nstate_dir: {0}/s\nallow_unsigned: true\nlisten: unix:{1}\n",
            root.display(),
            sock.display()
        ),
    )
    .expect("config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"));
    // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::libc::umask(0);
            Ok(())
        });
    }
    cmd.arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn adaptived")
}

fn unix_health(sock: &Path) -> Option<String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_unix_up(sock: &Path, child: &mut std::process::Child, log: &Path) {
    wait_until("the unix socket to answer", Duration::from_secs(20), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "adaptived exited with {st}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        unix_health(sock).is_some_and(|t| t.starts_with("HTTP/1.1 200"))
    });
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_unix_socket_is_0660_and_never_taken_from_a_live_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let _s = serial();
    let tmp = TempDir::new("unix2");
    let sock = tmp.path().join("a.sock");
    let (log1, log2) = (tmp.path().join("1.log"), tmp.path().join("2.log"));
    let mut first = Killed(start_unix(tmp.path(), &sock, &log1));
    wait_unix_up(&sock, &mut first.0, &log1);
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o} under umask 000");
    // A second daemon on the same path refuses to start, naming the socket.
    let mut second = Killed(start_unix(tmp.path(), &sock, &log2));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(st)) = second.0.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the second daemon is still running; log:\n{}",
            std::fs::read_to_string(&log2).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log2).unwrap_or_default();
    println!(
        "second daemon: {status}; {}",
        text.lines().last().unwrap_or("")
    );
    assert!(!status.success());
    assert!(
        text.contains(&sock.display().to_string()) && text.contains("in use"),
        "{text}"
    );
    let answer = unix_health(&sock).unwrap_or_default();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the first daemon: {answer}"
    );
    assert!(first.0.try_wait().expect("wait").is_none());
}

#[test]
fn a_stale_unix_socket_is_replaced() {
    let _s = serial();
    let tmp = TempDir::new("unix3");
    let sock = tmp.path().join("a.sock");
    // A socket file nobody listens on (its listener is gone).
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let log = tmp.path().join("1.log");
    let mut d = Killed(start_unix(tmp.path(), &sock, &log));
    wait_unix_up(&sock, &mut d.0, &log);
}
