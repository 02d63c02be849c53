//! KServe v2 / Triton compatibility against a real daemon: the stock
//! `tritonclient[http]` with its default settings (binary tensor data,
//! async_infer, compression, classification, statistics, config) and the
//! Open Inference Protocol's own request examples, driven by
//! `tests/scripts/triton_client.py`; the stock `tritonclient[grpc]` on the
//! gRPC endpoint (`tests/scripts/triton_grpc_client.py`); and large JSON
//! bodies decoded off the async threads (health checks stay fast meanwhile).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptivenet_testkit::prelude::*;

const WAIT: Duration = Duration::from_secs(60);
const MODEL: &str = "fmnist-resnet";

fn serving(root: &std::path::Path) -> Daemon {
    let d = Daemon::start(root, "");
    drop_bundle(&d.bundle_dir, "fmnist-v1.bundle", &signed_bundle(1));
    d.wait_for("the bundle to serve", WAIT, |a| {
        served_version(a) == Some(1)
    });
    d
}

/// Run `tests/scripts/SCRIPT` (a stock tritonclient driver; `module` is the
/// client module it needs) with `args`; it must print `MARKER: ok`.
fn run_client_script(d: &Daemon, module: &str, script: &str, args: &[String]) {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {module}, numpy")])
        .status()
        .expect("python3 runs");
    assert!(
        probe.success(),
        "{module} is not installed: run scripts/install-deps.sh"
    );
    let out = Command::new("python3")
        .arg(repo().join("tests/scripts").join(script))
        .args(args)
        .output()
        .expect("python3 runs the client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let marker = format!("{}: ok", script.trim_end_matches(".py"));
    assert!(
        out.status.success() && stdout.contains(&marker),
        "{script} failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        d.log_text()
    );
}

#[test]
fn the_stock_triton_http_client_works_with_its_defaults() {
    let tmp = TempDir::new("kserve");
    let d = serving(tmp.path());
    run_client_script(
        &d,
        "tritonclient.http",
        "triton_client.py",
        &[d.addr.to_string(), MODEL.into()],
    );
}

#[test]
fn the_stock_triton_grpc_client_works_with_its_defaults() {
    let tmp = TempDir::new("kserve-grpc");
    let d = Daemon::start(tmp.path(), "grpc_listen: 127.0.0.1:0\n");
    drop_bundle(&d.bundle_dir, "fmnist-v1.bundle", &signed_bundle(1));
    d.wait_for("the bundle to serve", WAIT, |a| {
        served_version(a) == Some(1)
    });
    let log = d.log_text();
    let grpc = log
        .split("gRPC listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no gRPC address in the log:\n{log}"))
        .to_string();
    run_client_script(
        &d,
        "tritonclient.grpc",
        "triton_grpc_client.py",
        &[grpc, d.addr.to_string(), MODEL.into()],
    );
    // gRPC requests count in the same metrics as HTTP ones.
    let m = d.client().get("/metrics").expect("GET /metrics").text();
    let ok = m
        .lines()
        .find_map(|l| l.strip_prefix("adaptived_requests_total{model=\"fmnist-resnet\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    // 8 gRPC infer calls (2 of them refused) and 1 over HTTP.
    assert!(ok.is_some_and(|n| n >= 9.0), "requests_total {ok:?}:\n{m}");
}

/// A valid-shaped infer request of about 14 MB: a batch of 64 with
/// 272-digit numbers (slow to parse).
fn big_json_body() -> Vec<u8> {
    let digits = format!("0.{}", "1234567890".repeat(27));
    let n = 64 * 28 * 28;
    let mut data = String::with_capacity(n * (digits.len() + 1));
    for i in 0..n {
        if i > 0 {
            data.push(',');
        }
        data.push_str(&digits);
    }
    format!(
        r#"{{"inputs":[{{"name":"input","shape":[64,1,28,28],"datatype":"FP32","data":[{data}]}}]}}"#
    )
    .into_bytes()
}

#[test]
fn large_json_requests_do_not_stall_health_checks() {
    let tmp = TempDir::new("kserve-big");
    let d = serving(tmp.path());
    let body = Arc::new(big_json_body());
    println!("request body: {:.1} MB", body.len() as f64 / 1e6);
    assert!(body.len() > 13_000_000 && body.len() < 16 << 20);
    let done = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (addr, body, done) = (d.addr, body.clone(), done.clone());
        senders.push(std::thread::spawn(move || {
            let mut c = Client::new(addr).with_timeout(Duration::from_secs(120));
            let mut statuses = Vec::new();
            // Two rounds each, so decoding overlaps the health checks.
            for _ in 0..2 {
                let t = Instant::now();
                let r = c
                    .post("/v2/models/fmnist-resnet/infer", &body)
                    .expect("big infer");
                statuses.push((r.status, t.elapsed()));
            }
            done.store(true, Ordering::Relaxed);
            statuses
        }));
    }
    let mut health = d.client().with_timeout(Duration::from_secs(30));
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
        let t = Instant::now();
        let r = health.get("/v2/health/live").expect("health");
        assert_eq!(r.status, 200);
        lat.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    for s in senders {
        let statuses = s.join().expect("sender thread");
        for (status, took) in statuses {
            assert_eq!(status, 200, "a large JSON request failed");
            println!(
                "large JSON request: 200 in {:.0} ms",
                took.as_secs_f64() * 1e3
            );
        }
    }
    lat.sort();
    let max = lat.last().copied().unwrap_or_default();
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or_default();
    println!(
        "health latency while two 14 MB JSON requests decode: {} checks, p50 {:.2} ms, max {:.2} ms",
        lat.len(),
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(lat.len() >= 5, "too few health checks ran: {}", lat.len());
    assert!(
        max < Duration::from_millis(500),
        "a health check took {max:?} while large requests decoded"
    );
}

/// `promtool check metrics` on the text, or None when promtool is missing.
fn promtool(text: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn metrics_pass_promtool_before_and_after_the_search() {
    if Command::new("promtool").arg("--version").output().is_err() {
        panic!("promtool is not installed: apt-get install prometheus (scripts/install-deps.sh)");
    }
    let tmp = TempDir::new("kserve-metrics");
    let (images, labels) = adaptivenet_testkit::fixtures::subset_files();
    let d = Daemon::start(
        tmp.path(),
        &format!(
            "validation_data:\n  images: {}\n  labels: {}\n  limit: 40\n",
            images.display(),
            labels.display()
        ),
    );
    let check = |when: &str| {
        let text = d.client().get("/metrics").expect("metrics").text();
        let (ok, out) = promtool(&text).expect("promtool runs");
        println!(
            "promtool check metrics {when}: {}",
            if ok { "clean" } else { "FAILED" }
        );
        assert!(ok, "promtool check metrics {when}:\n{out}\n{text}");
        for needle in [
            "adaptived_contention_factor ",
            "adaptived_cpu_freq_ratio ",
            "adaptived_budget_seconds ",
            "adaptived_cpu_other_ratio ",
            "adaptived_memory_available_bytes ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(needle), "{when}: no `{needle}` in\n{text}");
        }
        text
    };
    let before = check("before the first bundle");
    assert!(before.contains("adaptived_swaps_total 0"), "{before}");
    drop_bundle(&d.bundle_dir, "fmnist-v1.bundle", &signed_bundle(1));
    // While it searches, /adaptation shows the phase, done/total and ETA.
    let progress = std::cell::RefCell::new(None::<serde_json::Value>);
    d.wait_for("the search to finish", Duration::from_secs(300), |a| {
        let p = &a["search"]["progress"];
        if a["search"]["state"] == "running"
            && p["phase"].is_string()
            && p["total"].as_u64().is_some_and(|t| t > 0)
        {
            progress.borrow_mut().get_or_insert_with(|| p.clone());
        }
        served_version(a) == Some(1) && a["search"]["state"] == "idle" && !a["accuracy"].is_null()
    });
    let log = d.log_text();
    let took: f64 = log
        .split("search done for ")
        .nth(1)
        .and_then(|r| r.split(" in ").nth(1))
        .and_then(|r| r.split(" s").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `search done` line in the log:\n{log}"));
    let seen = progress.into_inner();
    println!("search took {took:.2} s; progress seen while running: {seen:?}");
    // Polled every few tens of ms: a search of more than a second is seen.
    if took > 1.0 {
        assert!(
            seen.is_some(),
            "no search progress in /adaptation during a {took:.2} s search"
        );
    }
    let mut c = d.client();
    let r = infer(&mut c, &infer_body("FP32", &[1, 1, 28, 28], &[0.0; 784]));
    assert_eq!(r.status, 200, "{}", r.text());
    let after = check("after the search");
    assert!(
        after.contains("adaptived_requests_total{model=\"fmnist-resnet\"} 1"),
        "{after}"
    );
    // The first load is not a swap.
    let a = d.adaptation();
    let swaps = a["swaps"].as_array().map(Vec::len).unwrap_or(0);
    let counted = after
        .lines()
        .find_map(|l| l.strip_prefix("adaptived_swaps_total "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .expect("adaptived_swaps_total");
    assert_eq!(
        counted + 1,
        swaps,
        "swaps counted {counted}, recorded {swaps}: {a:#}"
    );
    let acc = &a["accuracy"];
    println!("/adaptation accuracy: {acc}");
    assert_eq!(acc["unit"], "percent");
    assert!(
        acc["oracle_pct"].as_f64().is_some_and(|p| p > 50.0),
        "{acc}"
    );
    assert!(acc["given_up_pct"].is_number(), "{acc}");
    assert!(
        acc["oracle_images"].as_u64().is_some_and(|n| n > 0),
        "{acc}"
    );
}
