//! The fault-injection suite for bundle intake (issue 11): real `adaptived`
//! processes, real files, bundles signed with the demo key, `kill -9`.
//! Every loop is bounded in count and every wait in time. Each test prints
//! its numbers (run with `--nocapture` to see them).
//!
//! `FAULTS_KILL_RUNS` sets the number of `kill -9` runs (default 30);
//! `FAULTS_SEED` the seed of the random moments (default fixed, printed).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use adaptivenet_onnx::rng::SplitMix;
use adaptivenet_testkit::prelude::*;

const WAIT: Duration = Duration::from_secs(60);
/// Short settling and polling so that the tests run quickly.
const FAST: &str = "watch: {settle_s: 1, poll_interval_s: 0.2}\n";

/// Start a daemon on `root` and wait until it serves `version`.
fn serving(root: &Path, extra: &str, version: u64) -> Daemon {
    let d = Daemon::start(root, extra);
    d.wait_for("the bundle to serve", WAIT, |a| {
        served_version(a) == Some(version)
    });
    d
}

/// Start a daemon, drop `version` and wait until it serves.
fn install_first(root: &Path, extra: &str, version: u64) -> Daemon {
    let d = Daemon::start(root, extra);
    drop_bundle(
        &d.bundle_dir,
        &format!("v{version}.bundle"),
        &signed_bundle(version),
    );
    d.wait_for("the first bundle to serve", WAIT, |a| {
        served_version(a) == Some(version)
    });
    d
}

/// The rejections `/adaptation` lists: (file, reason).
fn rejections(a: &serde_json::Value) -> Vec<(String, String)> {
    a["rejected"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| {
                    (
                        x["file"].as_str().unwrap_or("").to_string(),
                        x["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Files in `rejected/` (bundles, not their reasons), sorted.
fn rejected_files(bundle_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(bundle_dir.join("rejected"))
        .map(|es| {
            es.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".reason"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Files left in the drop folder (not the `rejected/` folder), sorted.
fn dropped_files(bundle_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(bundle_dir)
        .map(|es| {
            es.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Claimed files left in `state_dir/intake/`.
fn claimed_files(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir.join("intake"))
        .map(|es| {
            es.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// The signed fixture bundle at `version` with an input shape of
/// `[N, 1, 1000000, 1000000]` in its manifest (the ONNX untouched).
fn huge_shape_bundle(version: u64) -> Vec<u8> {
    resigned_with_manifest(&signed_bundle(version), |m| {
        m.replacen(
            "  shape:\n  - N\n  - 1\n  - 28\n  - 28\n  dtype",
            "  shape:\n  - N\n  - 1\n  - 1000000\n  - 1000000\n  dtype",
            1,
        )
    })
}

#[test]
fn a_signed_bundle_with_a_huge_input_shape_is_rejected_and_never_crashes_the_daemon() {
    let tmp = TempDir::new("huge");
    let mut d = install_first(tmp.path(), FAST, 1);
    let huge = huge_shape_bundle(2);
    let t = Instant::now();
    drop_bundle(&d.bundle_dir, "huge.bundle", &huge);
    let a = d.wait_for("the huge-shape bundle to be rejected", WAIT, |a| {
        rejections(a).iter().any(|(f, _)| f == "huge.bundle")
    });
    let (_, reason) = rejections(&a)
        .into_iter()
        .find(|(f, _)| f == "huge.bundle")
        .expect("the rejection");
    println!(
        "huge shape: rejected in {:.0} ms: {reason}",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(reason.contains("input.shape"), "{reason}");
    assert_eq!(served_version(&a), Some(1), "v1 keeps serving");
    assert_eq!(rejected_files(&d.bundle_dir), vec!["huge.bundle"]);
    let why = std::fs::read_to_string(d.bundle_dir.join("rejected/huge.bundle.reason"))
        .expect("the .reason file");
    assert!(why.contains("input.shape"), "{why}");
    // The same bundle dropped again, then three restarts: it serves each time.
    drop_bundle(&d.bundle_dir, "huge.bundle", &huge);
    for restart in 1..=3 {
        d.kill9();
        let t = Instant::now();
        d = serving(tmp.path(), FAST, 1);
        holds_for(
            "the daemon to keep serving v1",
            Duration::from_millis(1500),
            || served_version(&d.adaptation()) == Some(1),
        );
        assert!(
            d.child.try_wait().expect("try_wait").is_none(),
            "the daemon exited"
        );
        println!(
            "huge shape: restart {restart}: serving v1 {:.0} ms after the start",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    assert!(
        !d.bundle_dir.join("huge.bundle").exists(),
        "the second copy was taken out of the drop folder"
    );
    assert_eq!(rejected_files(&d.bundle_dir).len(), 2, "both copies kept");
}

#[test]
fn a_newer_bundle_renamed_over_one_being_checked_is_never_lost() {
    let tmp = TempDir::new("race");
    let d = install_first(tmp.path(), FAST, 1);
    let seed = 0x11a_5eed_u64;
    let mut rng = SplitMix::seeded(seed);
    let tries = 5u64;
    // Build every bundle first: only the drops are timed.
    let bundles: Vec<(u64, Vec<u8>)> = (2..2 + 2 * tries).map(|v| (v, signed_bundle(v))).collect();
    let mut ok = 0;
    for pair in bundles.chunks(2) {
        let [(older, a), (newer, b)] = pair else {
            unreachable!()
        };
        let gap = Duration::from_millis(20 + rng.next_u64() % 51);
        drop_bundle(&d.bundle_dir, "race.bundle", a);
        std::thread::sleep(gap);
        drop_bundle(&d.bundle_dir, "race.bundle", b);
        let a = d.wait_for("the newer bundle served or rejected", WAIT, |a| {
            served_version(a) == Some(*newer)
                || rejections(a)
                    .iter()
                    .any(|(_, r)| r.contains(&format!("version {newer}")))
        });
        let served = served_version(&a) == Some(*newer);
        println!(
            "race v{older} then v{newer} after {} ms: {}",
            gap.as_millis(),
            if served {
                "newer served"
            } else {
                "newer rejected with a reason"
            }
        );
        ok += 1;
    }
    println!("same-name races (seed {seed:#x}): {ok} of {tries} ended with the newer bundle served or rejected with a reason");
    assert_eq!(ok, tries);
    assert!(claimed_files(&d.state_dir).is_empty());
}

/// Flip one byte in the middle of a file.
fn flip_a_byte(path: &Path) {
    let mut b = std::fs::read(path).expect("read");
    let n = b.len() / 2;
    b[n] ^= 0xff;
    std::fs::write(path, b).expect("write");
}

#[test]
fn a_damaged_active_bundle_falls_back_to_the_previous_slot_and_keeps_the_version_floor() {
    let tmp = TempDir::new("slots");
    let mut d = install_first(tmp.path(), FAST, 1);
    drop_bundle(&d.bundle_dir, "v2.bundle", &signed_bundle(2));
    d.wait_for("v2 to serve", WAIT, |a| served_version(a) == Some(2));
    let older = signed_bundle(1);
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 2] = [
        ("one byte flipped", flip_a_byte),
        ("emptied", |p| std::fs::write(p, b"").expect("truncate")),
    ];
    for (i, (what, damage)) in damages.into_iter().enumerate() {
        d.kill9();
        damage(&d.state_dir.join("active.bundle"));
        let t = Instant::now();
        d = serving(tmp.path(), FAST, 1);
        let a = d.adaptation();
        println!(
            "active.bundle {what}: serving the previous slot (v1) {:.0} ms after the start; intake: {}",
            t.elapsed().as_secs_f64() * 1e3,
            a["intake"]
        );
        assert_eq!(a["intake"]["slot"], "previous", "{a:#}");
        assert_eq!(a["intake"]["version_floor"], 2, "{a:#}");
        assert!(d.log_text().contains("serving the previous bundle"));
        // An older (and the same) version is refused.
        let name = format!("older-{i}.bundle");
        drop_bundle(&d.bundle_dir, &name, &older);
        let a = d.wait_for("the older bundle to be refused", WAIT, |a| {
            rejections(a).iter().any(|(f, _)| *f == name)
        });
        let reason = rejections(&a)
            .into_iter()
            .find(|(f, _)| *f == name)
            .map(|(_, r)| r)
            .unwrap_or_default();
        println!("older bundle after the damage: {reason}");
        assert!(
            reason.contains("version 1 is older than the installed version 2"),
            "{reason}"
        );
        assert_eq!(served_version(&a), Some(1));
    }
    // A newer one is accepted, and the previous slot stays the good v1.
    drop_bundle(&d.bundle_dir, "v3.bundle", &signed_bundle(3));
    d.wait_for("v3 to serve", WAIT, |a| served_version(a) == Some(3));
    d.kill9();
    flip_a_byte(&d.state_dir.join("active.bundle"));
    let d = serving(tmp.path(), FAST, 1);
    assert_eq!(d.adaptation()["intake"]["version_floor"], 3);
}

#[test]
fn a_bundle_written_in_place_with_a_pause_is_served_not_rejected() {
    let tmp = TempDir::new("pause");
    let d = Daemon::start(tmp.path(), "watch: {settle_s: 5, poll_interval_s: 0.2}\n");
    let bytes = signed_bundle(1);
    let path = d.bundle_dir.join("paused.bundle");
    {
        let mut f = std::fs::File::create(&path).expect("create");
        write_all(&mut f, &bytes[..bytes.len() / 2]);
    } // closed at half
    let pause = Duration::from_secs(3);
    holds_for("the half bundle not being judged", pause, || {
        let a = d.adaptation();
        rejections(&a).is_empty() && served_version(&a).is_none()
    });
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("reopen");
    f.write_all(&bytes[bytes.len() / 2..]).expect("append");
    drop(f);
    let t = Instant::now();
    let a = d.wait_for("the completed bundle to serve", WAIT, |a| {
        served_version(a) == Some(1)
    });
    println!(
        "paused writer ({} s pause, settle 5 s): served {:.0} ms after the rest was appended",
        pause.as_secs(),
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(rejections(&a).is_empty(), "{a:#}");
    assert!(rejected_files(&d.bundle_dir).is_empty());
}

#[test]
fn rejected_keeps_the_last_n_under_unique_names() {
    let tmp = TempDir::new("keep");
    let d = Daemon::start(
        tmp.path(),
        "watch: {settle_s: 1, poll_interval_s: 0.2, keep_rejected: 3}\n",
    );
    let bad = badly_signed_bundle(1);
    let n = 5;
    let t = Instant::now();
    for i in 1..=n {
        drop_bundle(&d.bundle_dir, "bad.bundle", &bad);
        d.wait_for("the rejection", WAIT, |a| rejections(a).len() == i);
    }
    let files = rejected_files(&d.bundle_dir);
    println!(
        "{n} rejections of one name in {:.1} s, keep_rejected 3: rejected/ holds {files:?}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert!(f.starts_with("bad.bundle"), "{f}");
        let reason = d.bundle_dir.join("rejected").join(format!("{f}.reason"));
        assert!(reason.is_file(), "{} missing", reason.display());
    }
    let reasons = std::fs::read_dir(d.bundle_dir.join("rejected"))
        .expect("rejected/")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".reason"))
        .count();
    assert_eq!(reasons, 3, "reasons pruned with their bundles");
}

#[test]
fn kill_9_at_random_moments_during_intake_and_swap_never_loses_a_bundle() {
    let runs: u64 = std::env::var("FAULTS_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0011);
    println!("kill -9: {runs} runs, seed {seed:#x} (FAULTS_KILL_RUNS, FAULTS_SEED)");
    let mut rng = SplitMix::seeded(seed);
    let tmp = TempDir::new("kill");
    let mut d = install_first(tmp.path(), FAST, 1);
    let started = Instant::now();
    let (mut installed, mut rejected, mut restart_ms) = (0, 0, Vec::new());
    let mut current = 1u64;
    for run in 0..runs {
        let version = current + 1;
        let name = format!("kill-{run}-v{version}.bundle");
        let bytes = signed_bundle(version);
        drop_bundle(&d.bundle_dir, &name, &bytes);
        let delay = Duration::from_millis(rng.next_u64() % 400);
        std::thread::sleep(delay);
        d.kill9();
        let t = Instant::now();
        d = Daemon::start(tmp.path(), FAST);
        // It serves again: the newest installed version or the one before.
        let a = d.wait_for("serving after the restart", WAIT, |a| {
            served_version(a).is_some()
        });
        restart_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let v = served_version(&a).unwrap_or(0);
        assert!(
            v == current || v == version,
            "run {run}: serving v{v}, expected v{current} or v{version}"
        );
        // The dropped bundle ends installed or rejected with a reason, once.
        let a = d.wait_for("the dropped bundle to be settled", WAIT, |a| {
            served_version(a) == Some(version)
                || rejections(a).iter().any(|(f, _)| *f == name)
                || rejected_files(&d.bundle_dir).contains(&name)
        });
        let is_served = served_version(&a) == Some(version);
        let in_rejected = rejected_files(&d.bundle_dir)
            .iter()
            .any(|f| f.starts_with(&name));
        assert!(
            is_served != in_rejected,
            "run {run}: v{version} served {is_served}, in rejected/ {in_rejected}"
        );
        if is_served {
            installed += 1;
            current = version;
        } else {
            let reason = std::fs::read_to_string(
                d.bundle_dir.join("rejected").join(format!("{name}.reason")),
            )
            .unwrap_or_default();
            assert!(
                reason.contains("the daemon stopped while checking this bundle"),
                "run {run}: {reason}"
            );
            rejected += 1;
        }
        // Consistent state: nothing left in the drop folder or the claim
        // folder, the record matches the bundle, the floor matches.
        wait_until("the claim folder to empty", WAIT, || {
            claimed_files(&d.state_dir).is_empty()
        });
        assert!(
            dropped_files(&d.bundle_dir).is_empty(),
            "run {run}: {:?}",
            dropped_files(&d.bundle_dir)
        );
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.state_dir.join("active.json")).expect("active.json"),
        )
        .expect("active.json parses");
        let sha = adaptivenet_onnx::bundle::sha256_of_file(&d.state_dir.join("active.bundle"))
            .expect("active.bundle");
        assert_eq!(info["sha256"], sha.as_str(), "run {run}: active.json");
        assert_eq!(info["version"], current, "run {run}: active.json");
        let floor: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.state_dir.join("floor.json")).expect("floor.json"),
        )
        .expect("floor.json parses");
        assert_eq!(floor["version"], current, "run {run}: floor.json");
        println!(
            "run {run}: killed {} ms after dropping v{version}: {}",
            delay.as_millis(),
            if is_served {
                "installed"
            } else {
                "rejected (stopped while checking)"
            }
        );
    }
    restart_ms.sort_by(f64::total_cmp);
    println!(
        "kill -9: {runs} runs in {:.1} s: {installed} installed, {rejected} rejected with a reason, 0 lost; serving again {:.0}-{:.0} ms after the restart (median {:.0} ms)",
        started.elapsed().as_secs_f64(),
        restart_ms.first().copied().unwrap_or(0.0),
        restart_ms.last().copied().unwrap_or(0.0),
        restart_ms.get(restart_ms.len() / 2).copied().unwrap_or(0.0),
    );
}

/// The datagrams received on `sock` within `window` that are `WATCHDOG=1`.
fn watchdog_pings(sock: &std::os::unix::net::UnixDatagram, window: Duration) -> usize {
    let mut buf = [0u8; 4096];
    let mut pings = 0;
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            pings += String::from_utf8_lossy(&buf[..n])
                .lines()
                .filter(|l| *l == "WATCHDOG=1")
                .count();
        }
    }
    pings
}

/// A value of `/metrics` (`name{labels}` exactly).
fn metric(d: &Daemon, series: &str) -> Option<f64> {
    let r = d.client().get("/metrics").expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Item 7: every long-lived thread (watcher, adaptation loop, HTTP runtime)
/// beats, and the systemd watchdog requires all of them, not only the
/// adaptation loop. A board file whose read blocks (a FIFO where the loop
/// reads the CPU clock, as a hung sysfs driver would) wedges the adaptation
/// loop: serving goes on, `/metrics` shows its silence, the log names it and
/// the pings stop, so systemd would restart the daemon; when the read
/// returns, the pings resume.
#[test]
fn a_wedged_thread_stops_the_watchdog_pings_and_metrics_name_it() {
    let tmp = TempDir::new("wedge");
    let board = tmp.path().join("board");
    adaptivenet_testkit::board::write_fake_board(
        &board,
        2,
        1_500_000,
        1_500_000,
        &[("cpu-thermal", 45.0)],
        0.0,
    )
    .expect("fake board");
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let extra = format!(
        "{FAST}watchdog_grace_s: 1\nmonitor: {{root: {}, interval_s: 0.2}}\npolicy: {{check_interval_s: 0.2}}\n",
        board.display()
    );
    let d = Daemon::start_watchdog(
        tmp.path(),
        &extra,
        &[("NOTIFY_SOCKET", sock_path.display().to_string())],
        1_000_000,
    );
    drop_bundle(&d.bundle_dir, "v1.bundle", &signed_bundle(1));
    d.wait_for("v1 to serve", WAIT, |a| served_version(a) == Some(1));
    // All alive: a ping every 0.5 s, every thread beating, no panics.
    let pings = watchdog_pings(&sock, Duration::from_secs(3));
    assert!(pings >= 3, "{pings} watchdog pings in 3 s");
    for t in ["watcher", "adapt", "http"] {
        let s = metric(
            &d,
            &format!("adaptived_thread_silence_seconds{{thread=\"{t}\"}}"),
        );
        assert!(s.is_some_and(|s| s < 2.0), "{t}: silent {s:?} s");
    }
    for t in ["watcher", "adapt", "search"] {
        let n = metric(
            &d,
            &format!("adaptived_thread_panics_total{{thread=\"{t}\"}}"),
        );
        assert_eq!(n, Some(0.0), "{t}");
    }
    // Wedge the adaptation loop on a read that never returns.
    let freq = board.join("sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq");
    let fifo = board.join("fifo.tmp");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(ok.success(), "mkfifo failed");
    std::fs::rename(&fifo, &freq).expect("FIFO over scaling_cur_freq");
    let wedged_at = Instant::now();
    wait_until(
        "the watchdog to name the silent adaptation loop",
        Duration::from_secs(20),
        || {
            d.log_text()
                .contains("not pinging the watchdog: silent: the adapt thread")
        },
    );
    let noticed = wedged_at.elapsed();
    // Drain what was sent before the log line, then no ping at all.
    let _ = watchdog_pings(&sock, Duration::from_millis(600));
    let pings = watchdog_pings(&sock, Duration::from_secs(2));
    assert_eq!(pings, 0, "pings while the adaptation loop is wedged");
    let silent = metric(&d, "adaptived_thread_silence_seconds{thread=\"adapt\"}");
    assert!(silent.is_some_and(|s| s > 2.0), "adapt silent {silent:?} s");
    let watcher = metric(&d, "adaptived_thread_silence_seconds{thread=\"watcher\"}");
    assert!(
        watcher.is_some_and(|s| s < 2.0),
        "watcher silent {watcher:?} s"
    );
    let body = infer_body("FP32", &[1, 1, 28, 28], &vec![0.0; 784]);
    let r = infer(&mut d.client(), &body);
    assert_eq!(r.status, 200, "serving while wedged: {}", r.text());
    // The read returns (a writer appears): the loop beats, pings resume.
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&freq)
        .expect("open the FIFO for writing");
    write_all(&mut w, b"1500000\n");
    drop(w);
    let plain = board.join("freq.tmp");
    std::fs::write(&plain, "1500000\n").expect("freq");
    std::fs::rename(&plain, &freq).expect("a plain file again");
    let mut seen = 0;
    wait_until("the pings to resume", Duration::from_secs(20), || {
        seen += watchdog_pings(&sock, Duration::from_millis(200));
        seen >= 2
    });
    println!(
        "wedged adaptation loop: named by the watchdog after {:.1} s; 0 pings while wedged; pings resumed after the read returned",
        noticed.as_secs_f64()
    );
}
