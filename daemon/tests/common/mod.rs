//! Helpers for the end-to-end tests: temp folders, signed test bundles made
//! from the oracle fixture, and a running `adaptived` on a free loopback port.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adaptivenet_daemon::client::{Client, Response};
use adaptivenet_onnx::bundle::Bundle;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn demo_pub() -> PathBuf {
    repo().join("tests/fixtures/keys/demo.pub")
}

/// A fresh folder, removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("adaptived-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn secret_key(path: &Path) -> minisign::SecretKey {
    let text = std::fs::read_to_string(path).expect("secret key");
    minisign::SecretKey::from_unencrypted_box(
        minisign::SecretKeyBox::from_string(&text).expect("key box"),
    )
    .expect("an unencrypted minisign key")
}

/// A minisign signature of `data` (the text of `manifest.sig`).
pub fn sign(sk: &minisign::SecretKey, data: &[u8]) -> Vec<u8> {
    minisign::sign(
        None,
        sk,
        std::io::Cursor::new(data),
        Some("file:manifest.yaml"),
        None,
    )
    .expect("signing")
    .into_string()
    .into_bytes()
}

pub fn demo_key() -> minisign::SecretKey {
    secret_key(&repo().join("tests/fixtures/keys/demo.key"))
}

/// An oracle-only bundle of the fixture at `version`, signed with the demo
/// key; returns its bytes.
pub fn signed_bundle(version: u64) -> Vec<u8> {
    let dir = TempDir::new("mk");
    let unsigned = dir.path().join("u.bundle");
    adaptivenet_daemon::demo::build_oracle_bundle(
        &repo().join(adaptivenet_daemon::demo::ORACLE_FIXTURE),
        &unsigned,
        version,
    )
    .expect("building a bundle");
    let b = Bundle::open(&unsigned, &[], true).expect("open unsigned");
    let out = dir.path().join("s.bundle");
    b.write_with_signature(&out, &sign(&demo_key(), &b.manifest_bytes))
        .expect("write signed");
    std::fs::read(&out).expect("read signed")
}

/// A bundle of `version` whose signature is that of another manifest (the
/// signature does not match).
pub fn badly_signed_bundle(version: u64) -> Vec<u8> {
    let dir = TempDir::new("bad");
    let a = dir.path().join("a.bundle");
    let b = dir.path().join("b.bundle");
    adaptivenet_daemon::demo::build_oracle_bundle(
        &repo().join(adaptivenet_daemon::demo::ORACLE_FIXTURE),
        &a,
        version,
    )
    .expect("bundle a");
    adaptivenet_daemon::demo::build_oracle_bundle(
        &repo().join(adaptivenet_daemon::demo::ORACLE_FIXTURE),
        &b,
        version + 100,
    )
    .expect("bundle b");
    let ba = Bundle::open(&a, &[], true).expect("open a");
    let bb = Bundle::open(&b, &[], true).expect("open b");
    let out = dir.path().join("x.bundle");
    ba.write_with_signature(&out, &sign(&demo_key(), &bb.manifest_bytes))
        .expect("write");
    std::fs::read(&out).expect("read")
}

/// A valid signed bundle with some bytes of its supernet flipped.
pub fn corrupt_bundle(version: u64) -> Vec<u8> {
    let mut bytes = signed_bundle(version);
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 16] {
        *b ^= 0x5a;
    }
    bytes
}

/// Drop a bundle the recommended way: write `NAME.part`, then rename.
pub fn drop_bundle(dir: &Path, name: &str, bytes: &[u8]) {
    let part = dir.join(format!("{name}.part"));
    std::fs::write(&part, bytes).expect("write .part");
    std::fs::rename(&part, dir.join(name)).expect("rename");
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
        let bundle_dir = root.join("bundles");
        let state_dir = root.join("state");
        let config = root.join("config.yaml");
        let mut text = format!(
            "bundle_dir: {}\nstate_dir: {}\nlisten: 127.0.0.1:0\ntrusted_keys: [{}]\n",
            bundle_dir.display(),
            state_dir.display(),
            demo_pub().display()
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_adaptived"));
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
