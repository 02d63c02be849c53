//! A real `adaptived` process for the end-to-end tests: a config in a
//! temp folder (drop folder, state folder, loopback port 0, the demo key
//! trusted), the log captured to a file, the bound address read from the
//! log, `/adaptation` polled with a deadline, `kill -9` on drop.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Client, Response};
use crate::fixtures;

/// The `adaptived` binary under test: `$ADAPTIVED_BIN` if set, else the one
/// cargo built beside the running test executable (`target/<profile>/`).
pub fn adaptived_bin() -> PathBuf {
    workspace_bin("adaptived", "ADAPTIVED_BIN", "adaptivenet-daemon")
}

/// The `adaptivenet` CLI (cloud tools) for tests outside its crate:
/// `$ADAPTIVENET_BIN` if set, else the one beside the running test executable.
pub fn adaptivenet_bin() -> PathBuf {
    workspace_bin("adaptivenet", "ADAPTIVENET_BIN", "adaptivenet-cloud-tools")
}

/// A binary of the workspace: `$var` if set, else `name` in the cargo
/// output folder of the running test executable.
fn workspace_bin(name: &str, var: &str, package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe
        .parent()
        .expect("the test executable's folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} does not exist: build it first (`cargo build -p {package}`) or set {var}",
        bin.display()
    );
    bin
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub bundle_dir: PathBuf,
    pub state_dir: PathBuf,
    pub started: Instant,
}

pub const STARTUP: Duration = Duration::from_secs(30);

impl Daemon {
    /// Start `adaptived` with a config in `root` (bundle/state folders under
    /// it) plus `extra` YAML lines; waits until it listens.
    pub fn start(root: &Path, extra: &str) -> Daemon {
        Daemon::start_env(root, extra, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_env(root: &Path, extra: &str, env: &[(&str, String)]) -> Daemon {
        Daemon::start_niced(root, extra, env, 0)
    }

    /// [`Daemon::start_env`] at a niceness (0: inherited); every thread of
    /// the daemon inherits it.
    pub fn start_niced(root: &Path, extra: &str, env: &[(&str, String)], nice: i32) -> Daemon {
        Daemon::start_limited(root, extra, env, nice, None)
    }

    /// [`Daemon::start_niced`] with, when `nofile` is given, that limit on
    /// open file descriptors (`RLIMIT_NOFILE`, soft and hard) for the daemon.
    pub fn start_limited(
        root: &Path,
        extra: &str,
        env: &[(&str, String)],
        nice: i32,
        nofile: Option<u64>,
    ) -> Daemon {
        Daemon::launch(root, extra, env, nice, nofile, None)
    }

    /// [`Daemon::start_env`] under a systemd-style watchdog: `WATCHDOG_USEC`
    /// is `usec` and `WATCHDOG_PID` the daemon's own pid (set by a shell
    /// that then execs the daemon, as systemd sets it for the main process).
    pub fn start_watchdog(root: &Path, extra: &str, env: &[(&str, String)], usec: u64) -> Daemon {
        Daemon::launch(root, extra, env, 0, None, Some(usec))
    }

    fn launch(
        root: &Path,
        extra: &str,
        env: &[(&str, String)],
        nice: i32,
        nofile: Option<u64>,
        watchdog_usec: Option<u64>,
    ) -> Daemon {
        let bundle_dir = root.join("bundles");
        let state_dir = root.join("state");
        let config = root.join("config.yaml");
        let mut text = format!(
            "bundle_dir: {}\nstate_dir: {}\nlisten: 127.0.0.1:0\ntrusted_keys: [{}]\n",
            bundle_dir.display(),
            state_dir.display(),
            fixtures::demo_pub().display()
        );
        text.push_str(extra);
        std::fs::write(&config, text).expect("config");
        let log = root.join(format!(
            "adaptived-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let started = Instant::now();
        let mut cmd = match watchdog_usec {
            None => Command::new(adaptived_bin()),
            Some(usec) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
                    .arg(adaptived_bin())
                    .env("WATCHDOG_USEC", usec.to_string());
                c
            }
        };
        if nice != 0 {
            use std::os::unix::process::CommandExt;
            // SAFETY: setpriority is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = nix::libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn adaptived");
        let mut d = Daemon {
            child,
            addr: "127.0.0.1:1".parse().expect("addr"),
            log,
            bundle_dir,
            state_dir,
            started,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            let text = d.log_text();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("");
                d.addr = addr
                    .parse()
                    .unwrap_or_else(|_| panic!("bad address `{addr}` in the log"));
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("adaptived exited with {status} before listening; log:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "adaptived did not listen within {STARTUP:?}; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config file [`Daemon::start`] wrote.
    pub fn config_path(&self) -> PathBuf {
        self.bundle_dir.parent().expect("root").join("config.yaml")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr).with_timeout(Duration::from_secs(30))
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .client()
            .get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        r.json().unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn adaptation(&self) -> serde_json::Value {
        // Any name works before a model is loaded; after, it must be the model's.
        self.get_json("/v2/models/fmnist-resnet/adaptation")
    }

    /// Wait until `cond` holds on `/adaptation` (bounded).
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.adaptation();
            if cond(&a) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; /adaptation: {a:#}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The version of the served bundle, from `/adaptation`.
pub fn served_version(a: &serde_json::Value) -> Option<u64> {
    a["bundle"]["version"].as_u64()
}

/// An infer request body.
pub fn infer_body(datatype: &str, shape: &[usize], data: &[f64]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "t",
        "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "data": data }],
    }))
    .expect("json")
}

/// POST an infer request.
pub fn infer(c: &mut Client, body: &[u8]) -> Response {
    c.post("/v2/models/fmnist-resnet/infer", body)
        .expect("infer request")
}

pub fn write_all(f: &mut std::fs::File, b: &[u8]) {
    f.write_all(b).expect("write");
    f.flush().expect("flush");
}

/// Poll `cond` every 10 ms until it holds; panics naming `what` after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Check `still` every 20 ms for the whole of `window`: for asserting that
/// something does not happen within a time the system is given (a file is
/// not taken before it settles, say). Panics at the first poll it fails.
pub fn holds_for(what: &str, window: Duration, mut still: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(still(), "{what} stopped holding before {window:?} passed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
