//! The Mender Update Module `ota/mender/adaptivenet-bundle` driven through
//! its states the way the Mender client calls it (`MODULE STATE FILES_DIR`,
//! working directory FILES_DIR, payload in FILES_DIR/files/), against the
//! real `adaptived` on loopback trusting the demo key.
//!
//! The module stops and starts the daemon for a rollback with configurable
//! commands (`systemctl stop/start adaptived` on a board). Here the test
//! plays the service manager: the commands are a small script that asks
//! the test (through files in a control folder) to stop or start the daemon
//! and waits for the answer, so every daemon stays a child of the test.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adaptivenet_testkit::prelude::{
    corrupt_bundle, demo_pub, infer_body, repo, signed_bundle, TempDir,
};

/// How long the module may wait for the daemon (its ADAPTIVENET_TIMEOUT).
const MODULE_TIMEOUT_S: u64 = 120;
/// A bound on every wait of the test itself.
const WAIT: Duration = Duration::from_secs(180);

fn module() -> PathBuf {
    repo().join("ota/mender/adaptivenet-bundle")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// An `adaptived` on a fixed loopback port (so a restart keeps its address),
/// with its folders and config under `root`.
struct Board {
    root: PathBuf,
    addr: SocketAddr,
    config: PathBuf,
    bundle_dir: PathBuf,
    daemon: Arc<Mutex<Option<Child>>>,
    starts: Arc<Mutex<u32>>,
}

impl Board {
    fn new(root: &Path) -> Board {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let bundle_dir = root.join("bundles");
        let state_dir = root.join("state");
        std::fs::create_dir_all(&bundle_dir).expect("bundle dir");
        let config = root.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "# adaptived config for the Mender module test\nbundle_dir: {}\nstate_dir: {}\nlisten: {addr}\ntrusted_keys: [{}]\n",
                bundle_dir.display(),
                state_dir.display(),
                demo_pub().display()
            ),
        )
        .expect("config");
        let b = Board {
            root: root.to_path_buf(),
            addr,
            config,
            bundle_dir,
            daemon: Arc::new(Mutex::new(None)),
            starts: Arc::new(Mutex::new(0)),
        };
        b.start().expect("start adaptived");
        b
    }

    /// Start the daemon and wait until it listens (bounded).
    fn start(&self) -> anyhow::Result<()> {
        start_daemon(
            &self.root,
            &self.config,
            self.addr,
            &self.daemon,
            &self.starts,
        )
    }

    fn client(&self) -> adaptivenet_testkit::Client {
        adaptivenet_testkit::Client::new(self.addr).with_timeout(Duration::from_secs(30))
    }

    fn adaptation(&self) -> serde_json::Value {
        let r = self
            .client()
            .get("/v2/models/fmnist-resnet/adaptation")
            .expect("GET /adaptation");
        r.json().expect("/adaptation JSON")
    }

    fn served_version(&self) -> Option<u64> {
        self.adaptation()["bundle"]["version"].as_u64()
    }

    fn log_text(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return out;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for l in logs {
            out.push_str(&format!("== {}\n", l.display()));
            out.push_str(&std::fs::read_to_string(&l).unwrap_or_default());
        }
        out
    }

    /// Wait until `version` serves (bounded).
    fn wait_version(&self, version: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.served_version() == Some(version) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "v{version} did not serve within {WAIT:?}; /adaptation: {:#}\n{}",
                self.adaptation(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An infer request answered by the served model.
    fn infer_ok(&self) {
        let body = infer_body("FP32", &[1, 1, 28, 28], &vec![0.1; 784]);
        let r = self
            .client()
            .post("/v2/models/fmnist-resnet/infer", &body)
            .expect("infer");
        assert_eq!(r.status, 200, "infer: {}", r.text());
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_daemon(
    root: &Path,
    config: &Path,
    addr: SocketAddr,
    slot: &Mutex<Option<Child>>,
    starts: &Mutex<u32>,
) -> anyhow::Result<()> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_some() {
        anyhow::bail!("already running");
    }
    let n = {
        let mut s = starts.lock().unwrap_or_else(|p| p.into_inner());
        *s += 1;
        *s
    };
    let log = root.join(format!("adaptived-{n}.log"));
    let log_file = std::fs::File::create(&log)?;
    let mut child = Command::new(adaptivenet_testkit::adaptived_bin())
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| anyhow::anyhow!("spawn adaptived: {e}"))?;
    let deadline = Instant::now() + WAIT;
    let want = format!("listening on http://{addr}");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&want) {
            *slot = Some(child);
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!("adaptived exited with {status}; log:\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("adaptived did not listen on {addr}; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop the daemon as systemd would: SIGTERM, then wait (SIGKILL after 30 s).
fn stop_daemon(slot: &Mutex<Option<Child>>) -> anyhow::Result<()> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut child) = slot.take() else {
        return Ok(()); // stopping a stopped service succeeds
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test's stand-in for systemd: serves `stop`/`start` requests that the
/// module's ADAPTIVENET_STOP/ADAPTIVENET_START script writes to `ctl/req`.
struct ServiceManager {
    stop: Arc<AtomicBool>,
    handled: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    script: PathBuf,
}

impl ServiceManager {
    fn new(board: &Board) -> ServiceManager {
        let ctl = board.root.join("ctl");
        std::fs::create_dir_all(&ctl).expect("ctl dir");
        // The script the module runs: write the request, wait for the
        // answer (bounded), exit 0 on "ok".
        let script = ctl.join("systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# test stand-in for `systemctl $1 adaptived`\nd='{}'\nprintf '%s\\n' \"$1\" >\"$d/req.tmp\" && mv \"$d/req.tmp\" \"$d/req\"\ni=0\nwhile [ ! -e \"$d/ack\" ]; do i=$((i + 1)); [ $i -lt 3000 ] || {{ echo 'no answer from the test' >&2; exit 1; }}; sleep 0.05; done\nr=$(cat \"$d/ack\"); rm -f \"$d/ack\"\n[ \"$r\" = ok ] || {{ echo \"$r\" >&2; exit 1; }}\n",
                ctl.display()
            ),
        )
        .expect("ctl script");
        make_executable(&script);
        let stop = Arc::new(AtomicBool::new(false));
        let handled = Arc::new(Mutex::new(Vec::new()));
        let (root, config, addr, slot, starts) = (
            board.root.clone(),
            board.config.clone(),
            board.addr,
            board.daemon.clone(),
            board.starts.clone(),
        );
        let thread = {
            let (stop, handled) = (stop.clone(), handled.clone());
            std::thread::spawn(move || {
                let req = ctl.join("req");
                let deadline = Instant::now() + Duration::from_secs(900);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(what) = std::fs::read_to_string(&req) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = std::fs::remove_file(&req);
                    let what = what.trim().to_string();
                    let result = match what.as_str() {
                        "stop" => stop_daemon(&slot),
                        "start" => start_daemon(&root, &config, addr, &slot, &starts),
                        other => Err(anyhow::anyhow!("unknown request `{other}`")),
                    };
                    handled.lock().unwrap_or_else(|p| p.into_inner()).push(what);
                    let answer = match result {
                        Ok(()) => "ok".to_string(),
                        Err(e) => format!("{e:#}"),
                    };
                    let tmp = ctl.join("ack.tmp");
                    if std::fs::write(&tmp, answer).is_ok() {
                        let _ = std::fs::rename(&tmp, ctl.join("ack"));
                    }
                }
            })
        };
        ServiceManager {
            stop,
            handled,
            thread: Some(thread),
            script,
        }
    }

    fn handled(&self) -> Vec<String> {
        self.handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for ServiceManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p).expect("metadata").permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(p, perm).expect("chmod");
}

/// A Mender-style module working directory for one payload (the File API
/// tree of update-modules-v3: version, artifact_name, device_type, header/,
/// tmp/ and files/).
fn files_dir(root: &Path, tag: &str, bundle_name: &str, bundle: &[u8]) -> PathBuf {
    let dir = root.join(format!("mender-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["header", "tmp", "files"] {
        std::fs::create_dir_all(dir.join(sub)).expect("files dir");
    }
    std::fs::write(dir.join("version"), "3\n").expect("version");
    std::fs::write(dir.join("artifact_name"), "adaptivenet-previous\n").expect("artifact_name");
    std::fs::write(dir.join("device_type"), "qemuarm64\n").expect("device_type");
    std::fs::write(
        dir.join("header/type-info"),
        r#"{"type":"adaptivenet-bundle"}"#,
    )
    .expect("type-info");
    std::fs::write(dir.join("header/meta-data"), "{}").expect("meta-data");
    std::fs::write(dir.join("header/files"), bundle_name).expect("files");
    std::fs::write(dir.join("files").join(bundle_name), bundle).expect("payload");
    dir
}

/// The module's environment: the daemon's config plus a module config.
fn module_conf(board: &Board, ctl_script: Option<&Path>) -> PathBuf {
    // Without a service manager the stop/start commands fail the test if
    // the module calls them.
    let (stop, start) = match ctl_script {
        Some(s) => (
            format!("{} stop", s.display()),
            format!("{} start", s.display()),
        ),
        None => ("false".to_string(), "false".to_string()),
    };
    let p = board.root.join("mender.conf");
    std::fs::write(
        &p,
        format!(
            "ADAPTIVENET_TIMEOUT={MODULE_TIMEOUT_S}\nADAPTIVENET_STOP='{stop}'\nADAPTIVENET_START='{start}'\n"
        ),
    )
    .expect("mender.conf");
    p
}

/// Run the module as Mender does; returns its output.
fn run(board: &Board, conf: &Path, state: &str, files: &Path) -> Output {
    let t = Instant::now();
    let out = Command::new(module())
        .arg(state)
        .arg(files)
        .current_dir(files)
        .env("ADAPTIVENET_CONFIG", &board.config)
        .env("ADAPTIVENET_MENDER_CONF", conf)
        .stdin(Stdio::null())
        .output()
        .expect("run the update module");
    println!(
        "{state}: exit {:?} in {:.1} s\n  stdout: {}\n  stderr: {}",
        out.status.code(),
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "\n          ")
    );
    out
}

fn ok(board: &Board, conf: &Path, state: &str, files: &Path) -> String {
    let out = run(board, conf, state, files);
    assert!(
        out.status.success(),
        "{state} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        board.log_text()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A board serving v1, installed by the module (first install: nothing to
/// roll back to).
fn board_serving_v1(tmp: &TempDir, conf_ctl: bool) -> (Board, Option<ServiceManager>, PathBuf) {
    let board = Board::new(tmp.path());
    let sm = conf_ctl.then(|| ServiceManager::new(&board));
    let conf = module_conf(&board, sm.as_ref().map(|s| s.script.as_path()));
    let files = files_dir(tmp.path(), "v1", "fmnist-v1.bundle", &signed_bundle(1));
    ok(&board, &conf, "ArtifactInstall", &files);
    ok(&board, &conf, "ArtifactCommit", &files);
    ok(&board, &conf, "Cleanup", &files);
    assert_eq!(board.served_version(), Some(1));
    (board, sm, conf)
}

#[test]
fn queries_and_unknown_states_follow_the_protocol() {
    let tmp = TempDir::new("mender-q");
    let board = Board::new(tmp.path());
    let conf = module_conf(&board, None);
    let files = files_dir(tmp.path(), "q", "x.bundle", b"x");
    assert_eq!(ok(&board, &conf, "SupportsRollback", &files), "Yes");
    assert_eq!(ok(&board, &conf, "NeedsArtifactReboot", &files), "No");
    for s in [
        "Download",
        "ArtifactVerifyReboot",
        "Cleanup",
        "SomeFutureState",
    ] {
        assert_eq!(ok(&board, &conf, s, &files), "", "{s} prints nothing");
    }
}

#[test]
fn a_good_bundle_installs_and_commits() {
    let tmp = TempDir::new("mender-good");
    let (board, _, conf) = board_serving_v1(&tmp, false);
    let files = files_dir(tmp.path(), "v2", "fmnist-v2.bundle", &signed_bundle(2));
    let t = Instant::now();
    ok(&board, &conf, "ArtifactInstall", &files);
    // ArtifactInstall returns only once v2 serves.
    assert_eq!(board.served_version(), Some(2), "after ArtifactInstall");
    ok(&board, &conf, "ArtifactCommit", &files);
    ok(&board, &conf, "Cleanup", &files);
    println!(
        "v1 -> v2 through the module: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    board.infer_ok();
    // The drop folder ends up empty (the daemon removes an installed file
    // right after installing it, which may be after the swap).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = std::fs::read_dir(&board.bundle_dir)
            .expect("bundle dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left in the drop folder: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_tampered_bundle_fails_with_the_daemons_reason_and_v1_keeps_serving() {
    let tmp = TempDir::new("mender-bad");
    let (board, _, conf) = board_serving_v1(&tmp, false);
    let files = files_dir(tmp.path(), "v3", "fmnist-v3.bundle", &corrupt_bundle(3));
    // Mender's error path: ArtifactInstall fails -> ArtifactRollback (the
    // module supports it) -> ArtifactFailure -> Cleanup.
    let out = run(&board, &conf, "ArtifactInstall", &files);
    assert!(!out.status.success(), "a tampered bundle must fail");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let a = board.adaptation();
    let rejected = a["rejected"].as_array().expect("rejected list");
    assert_eq!(rejected.len(), 1, "{a:#}");
    let reason = rejected[0]["reason"].as_str().expect("reason");
    println!("daemon's reason: {reason}");
    assert!(
        stderr.contains(&format!("adaptived rejected the bundle: {reason}")),
        "the module's message lacks the daemon's reason `{reason}`: {stderr}"
    );
    assert!(
        reason.contains("checksum") || reason.contains("tar") || reason.contains("archive"),
        "{reason}"
    );
    // No stop/start is needed (the commands are `false` here: calling them
    // would fail the rollback).
    ok(&board, &conf, "ArtifactRollback", &files);
    ok(&board, &conf, "ArtifactFailure", &files);
    ok(&board, &conf, "Cleanup", &files);
    assert_eq!(board.served_version(), Some(1), "v1 keeps serving");
    board.infer_ok();
}

#[test]
fn a_rollback_after_install_leaves_the_previous_version_serving() {
    let tmp = TempDir::new("mender-rb");
    let (board, sm, conf) = board_serving_v1(&tmp, true);
    let sm = sm.expect("service manager");
    let v1_sha = board.adaptation()["bundle"]["sha256"]
        .as_str()
        .expect("sha")
        .to_string();
    let files = files_dir(tmp.path(), "v2", "fmnist-v2.bundle", &signed_bundle(2));
    ok(&board, &conf, "ArtifactInstall", &files);
    assert_eq!(board.served_version(), Some(2));
    // A later state failed (ArtifactCommit, or an ArtifactInstall_Leave
    // state script): Mender calls ArtifactRollback, then ArtifactFailure.
    let t = Instant::now();
    ok(&board, &conf, "ArtifactRollback", &files);
    println!("rollback: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(sm.handled(), vec!["stop", "start"], "one restart");
    ok(&board, &conf, "ArtifactFailure", &files);
    ok(&board, &conf, "Cleanup", &files);
    let a = board.adaptation();
    assert_eq!(a["bundle"]["version"].as_u64(), Some(1), "{a:#}");
    assert_eq!(a["bundle"]["sha256"].as_str(), Some(v1_sha.as_str()));
    board.infer_ok();
    let log = board.log_text();
    println!(
        "v1 restored {}",
        if log.contains("restored from state_dir with its stored search result") {
            "with its stored search result"
        } else {
            "without a stored search result (searched again)"
        }
    );
    // The daemon's notion of "installed" went back too: v2 installs again.
    let again = files_dir(tmp.path(), "v2b", "fmnist-v2.bundle", &signed_bundle(2));
    ok(&board, &conf, "ArtifactInstall", &again);
    ok(&board, &conf, "ArtifactCommit", &again);
    board.wait_version(2);
}

/// Run a command; its output, with a message naming it on failure to start.
fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Unpack a Mender artifact (format v3: version, manifest, header.tar.gz,
/// data/0000.tar.gz) into the File-API tree the client gives a module.
fn files_dir_from_artifact(root: &Path, tag: &str, artifact: &Path) -> PathBuf {
    let raw = root.join(format!("artifact-{tag}"));
    let dir = root.join(format!("mender-{tag}"));
    for d in [&raw, &dir] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).expect("dir");
    }
    sh(Command::new("tar")
        .arg("-xf")
        .arg(artifact)
        .arg("-C")
        .arg(&raw));
    let hdr = raw.join("hdr");
    std::fs::create_dir_all(&hdr).expect("hdr");
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(raw.join("header.tar.gz"))
        .arg("-C")
        .arg(&hdr));
    for sub in ["header", "tmp", "files"] {
        std::fs::create_dir_all(dir.join(sub)).expect("files dir");
    }
    std::fs::copy(hdr.join("header-info"), dir.join("header/header-info")).expect("header-info");
    for f in ["type-info", "meta-data"] {
        if hdr.join("headers/0000").join(f).is_file() {
            std::fs::copy(hdr.join("headers/0000").join(f), dir.join("header").join(f))
                .expect("header file");
        }
    }
    std::fs::write(dir.join("version"), "3\n").expect("version");
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(raw.join("data/0000.tar.gz"))
        .arg("-C")
        .arg(dir.join("files")));
    dir
}

#[test]
fn an_artifact_from_make_artifact_installs_and_commits() {
    let have = Command::new("mender-artifact")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        have,
        "mender-artifact is needed (Debian: apt-get install mender-artifact)"
    );
    let tmp = TempDir::new("mender-art");
    let (board, _, conf) = board_serving_v1(&tmp, false);
    let bundle = tmp.path().join("fmnist-resnet-v2.bundle");
    std::fs::write(&bundle, signed_bundle(2)).expect("bundle");
    let artifact = tmp.path().join("v2.mender");
    let made = sh(Command::new(repo().join("ota/mender/make-artifact.sh"))
        .args(["-t", "qemuarm64", "-t", "raspberrypi4-64", "-o"])
        .arg(&artifact)
        .arg(&bundle));
    println!("{}", String::from_utf8_lossy(&made.stdout).trim());
    let read = sh(Command::new("mender-artifact").arg("read").arg(&artifact));
    let text = String::from_utf8_lossy(&read.stdout).to_string();
    for want in [
        "Name: adaptivenet-fmnist-resnet-v2",
        "Type:   adaptivenet-bundle",
        "adaptivenet.fmnist-resnet.version: 2",
        "name:     fmnist-resnet-v2.bundle",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    let files = files_dir_from_artifact(tmp.path(), "art", &artifact);
    assert!(read_to(&files.join("header/type-info")).contains("adaptivenet-bundle"));
    assert_eq!(
        std::fs::read(files.join("files/fmnist-resnet-v2.bundle")).expect("payload"),
        std::fs::read(&bundle).expect("bundle"),
        "the payload is the bundle, unchanged"
    );
    assert_eq!(ok(&board, &conf, "SupportsRollback", &files), "Yes");
    ok(&board, &conf, "ArtifactInstall", &files);
    ok(&board, &conf, "ArtifactCommit", &files);
    ok(&board, &conf, "Cleanup", &files);
    assert_eq!(board.served_version(), Some(2));
    board.infer_ok();
}

fn read_to(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `ota/adaptivenet-install BUNDLE`, the entry of the SWUpdate handler and
/// the RAUC hook.
#[test]
fn adaptivenet_install_installs_a_good_bundle_and_rolls_back_a_tampered_one() {
    let tmp = TempDir::new("ota-install");
    let (board, _, conf) = board_serving_v1(&tmp, false);
    let install = |bytes: &[u8], name: &str| -> Output {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).expect("bundle");
        let out = Command::new(repo().join("ota/adaptivenet-install"))
            .arg(&p)
            .env("ADAPTIVENET_CONFIG", &board.config)
            .env("ADAPTIVENET_MENDER_CONF", &conf)
            .stdin(Stdio::null())
            .output()
            .expect("run adaptivenet-install");
        println!(
            "adaptivenet-install {name}: exit {:?}\n  {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "\n  ")
        );
        out
    };
    let good = install(&signed_bundle(2), "v2.bundle");
    assert_eq!(good.status.code(), Some(0), "{}", board.log_text());
    assert_eq!(board.served_version(), Some(2));
    let bad = install(&corrupt_bundle(3), "v3.bundle");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("adaptived rejected the bundle: "),
        "{stderr}"
    );
    assert!(stderr.contains("never replaced"), "rolled back: {stderr}");
    assert_eq!(board.served_version(), Some(2), "v2 keeps serving");
    board.infer_ok();
}

/// The Mender client itself (Debian's `mender-client` 3.x in standalone
/// mode: `mender install`, `commit`, `rollback`) running the module, with
/// its state in a temp folder. The client looks for modules only in
/// /usr/share/mender/modules/v3, so this runs when the module there is this
/// repository's (`install -m 0755 ota/mender/adaptivenet-bundle
/// /usr/share/mender/modules/v3/`); otherwise it prints why and returns.
#[test]
fn the_mender_client_installs_commits_and_rolls_back_through_the_module() {
    let installed = Path::new("/usr/share/mender/modules/v3/adaptivenet-bundle");
    let have_client = Command::new("mender")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let same = std::fs::read(installed).ok() == std::fs::read(module()).ok();
    // The client refuses to install without the rootfs's artifact name.
    let named = Path::new("/etc/mender/artifact_info").is_file();
    let have_artifact = Command::new("mender-artifact")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !(have_client && same && have_artifact && named) {
        println!(
            "NOT RUN: needs the mender client ({have_client}), mender-artifact ({have_artifact}), this module at {} ({same}) and /etc/mender/artifact_info ({named})",
            installed.display()
        );
        return;
    }
    let tmp = TempDir::new("mender-client");
    let (board, sm, conf) = board_serving_v1(&tmp, true);
    let sm = sm.expect("service manager");
    let data = tmp.path().join("mender-data");
    std::fs::create_dir_all(&data).expect("mender data");
    std::fs::write(data.join("device_type"), "device_type=qemuarm64\n").expect("device_type");
    let mender_conf = tmp.path().join("mender-client.conf");
    std::fs::write(&mender_conf, "{}\n").expect("mender-client.conf");
    let artifact = |version: u64, bytes: Vec<u8>| -> PathBuf {
        let b = tmp.path().join(format!("fmnist-v{version}.bundle"));
        std::fs::write(&b, bytes).expect("bundle");
        let a = tmp.path().join(format!("v{version}.mender"));
        sh(Command::new(repo().join("ota/mender/make-artifact.sh"))
            .args(["-t", "qemuarm64", "-o"])
            .arg(&a)
            .arg(&b));
        a
    };
    let mender = |args: &[&str]| -> Output {
        let t = Instant::now();
        let out = Command::new("mender")
            .arg("--no-syslog")
            .arg("--config")
            .arg(&mender_conf)
            .arg("--fallback-config")
            .arg(tmp.path().join("none.conf"))
            .arg("--data")
            .arg(&data)
            .args(args)
            .env("ADAPTIVENET_CONFIG", &board.config)
            .env("ADAPTIVENET_MENDER_CONF", &conf)
            .stdin(Stdio::null())
            .output()
            .expect("run mender");
        let log = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("adaptivenet-bundle:") || l.contains("level=error"))
            .collect();
        println!(
            "mender {}: exit {:?} in {:.1} s\n  {}",
            args.join(" "),
            out.status.code(),
            t.elapsed().as_secs_f64(),
            lines.join("\n  ")
        );
        out
    };
    let show = || -> String {
        let o = mender(&["show-artifact"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    // v2: install + commit.
    let v2 = artifact(2, signed_bundle(2));
    assert!(mender(&["install", v2.to_str().expect("path")])
        .status
        .success());
    assert_eq!(board.served_version(), Some(2));
    assert!(mender(&["commit"]).status.success());
    assert_eq!(show(), "adaptivenet-fmnist-resnet-v2");
    // v3 tampered: the install fails, Mender rolls back, v2 serves.
    let v3 = artifact(3, corrupt_bundle(3));
    let out = mender(&["install", v3.to_str().expect("path")]);
    assert!(!out.status.success(), "a tampered bundle must fail");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("adaptived rejected the bundle: "), "{log}");
    assert_eq!(board.served_version(), Some(2));
    assert_eq!(show(), "adaptivenet-fmnist-resnet-v2");
    // v4: installed, then rolled back by hand: v2 serves again.
    let v4 = artifact(4, signed_bundle(4));
    assert!(mender(&["install", v4.to_str().expect("path")])
        .status
        .success());
    assert_eq!(board.served_version(), Some(4));
    assert!(mender(&["rollback"]).status.success());
    assert_eq!(board.served_version(), Some(2));
    assert_eq!(show(), "adaptivenet-fmnist-resnet-v2");
    assert_eq!(sm.handled(), vec!["stop", "start"]);
    board.infer_ok();
}

/// SWUpdate (Debian's swupdate 2022.12, built with Lua handlers and for
/// CMS-signed images) installing `.swu` images through
/// ota/swupdate/swupdate_handlers.lua, which calls adaptivenet-install.
/// Needs swupdate, cpio and openssl; otherwise prints why and returns.
#[test]
fn swupdate_installs_through_the_lua_handler_and_fails_on_a_tampered_bundle() {
    let have = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let tools = [
        ("swupdate", have("swupdate", "-h")),
        ("cpio", have("cpio", "--version")),
        ("openssl", have("openssl", "version")),
    ];
    if tools.iter().any(|(_, ok)| !ok) {
        println!("NOT RUN: needs swupdate, cpio and openssl: {tools:?}");
        return;
    }
    let tmp = TempDir::new("swupdate");
    let (board, _, conf) = board_serving_v1(&tmp, false);
    // A signing certificate for sw-description (SWUpdate checks a CMS
    // signature against it).
    let key = tmp.path().join("swu.key");
    let cert = tmp.path().join("swu.crt");
    sh(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    sh(Command::new("openssl")
        .args(["req", "-x509", "-new", "-key"])
        .arg(&key)
        .args([
            "-subj",
            "/CN=adaptivenet-test",
            "-days",
            "2",
            "-addext",
            "extendedKeyUsage=emailProtection,codeSigning",
            "-out",
        ])
        .arg(&cert));
    let example = read_to(&repo().join("ota/swupdate/sw-description.example"));
    let swu = |version: u64, bytes: Vec<u8>| -> PathBuf {
        let dir = tmp.path().join(format!("swu-v{version}"));
        std::fs::create_dir_all(&dir).expect("swu dir");
        let bundle = dir.join("fmnist-resnet.bundle");
        std::fs::write(&bundle, &bytes).expect("bundle");
        let sha = sh(Command::new("sha256sum").arg(&bundle));
        let sha = String::from_utf8_lossy(&sha.stdout)
            .split_whitespace()
            .next()
            .expect("sha256")
            .to_string();
        let desc = example
            .replace("$swupdate_get_sha256(fmnist-resnet.bundle)", &sha)
            .replace("version = \"2\"", &format!("version = \"{version}\""));
        std::fs::write(dir.join("sw-description"), desc).expect("sw-description");
        sh(Command::new("openssl")
            .args([
                "cms",
                "-sign",
                "-in",
                "sw-description",
                "-out",
                "sw-description.sig",
            ])
            .arg("-signer")
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .args(["-outform", "DER", "-nosmimecap", "-binary"])
            .current_dir(&dir));
        let out = dir.join(format!("v{version}.swu"));
        let file = std::fs::File::create(&out).expect("swu file");
        let mut cpio = Command::new("cpio")
            .args(["-o", "-H", "crc"])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("cpio");
        {
            use std::io::Write;
            let mut stdin = cpio.stdin.take().expect("cpio stdin");
            stdin
                .write_all(b"sw-description\nsw-description.sig\nfmnist-resnet.bundle\n")
                .expect("cpio list");
        }
        assert!(cpio.wait().expect("cpio").success());
        out
    };
    let run = |image: &Path| -> Output {
        let t = Instant::now();
        let out = Command::new("swupdate")
            .args(["-v", "-H", "qemuarm64:1.0", "-k"])
            .arg(&cert)
            .arg("-i")
            .arg(image)
            .env(
                "LUA_PATH",
                format!("{}/?.lua;;", repo().join("ota/swupdate").display()),
            )
            .env(
                "ADAPTIVENET_INSTALL",
                repo().join("ota/adaptivenet-install"),
            )
            .env("ADAPTIVENET_CONFIG", &board.config)
            .env("ADAPTIVENET_MENDER_CONF", &conf)
            .stdin(Stdio::null())
            .output()
            .expect("run swupdate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("adaptivenet")
                    || l.contains("Lua handler")
                    || l.contains("SWUPDATE successful")
                    || l.contains("failed")
            })
            .collect();
        println!(
            "swupdate -i {}: exit {:?} in {:.1} s\n  {}",
            image.display(),
            out.status.code(),
            t.elapsed().as_secs_f64(),
            lines.join("\n  ")
        );
        out
    };
    let good = run(&swu(2, signed_bundle(2)));
    let text = String::from_utf8_lossy(&good.stdout).to_string();
    assert!(good.status.success(), "{text}");
    assert!(text.contains("[Lua handler] returned: 0"), "{text}");
    assert_eq!(board.served_version(), Some(2));
    let bad = run(&swu(3, corrupt_bundle(3)));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!bad.status.success(), "{text}");
    assert!(text.contains("adaptived rejected the bundle: "), "{text}");
    assert_eq!(board.served_version(), Some(2), "v2 keeps serving");
    board.infer_ok();
}
