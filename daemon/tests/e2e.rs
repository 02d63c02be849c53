//! End-to-end tests: the real `adaptived` binary on a free loopback port with
//! temp folders, bundles made from the oracle fixture and signed with the
//! demo key. Every wait is bounded in time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptivenet_daemon::engine::materialise_subnet;
use adaptivenet_onnx::bundle::Bundle;
use adaptivenet_onnx::dataset::{Dataset, Preprocess};
use adaptivenet_onnx::idx::read_idx;
use adaptivenet_onnx::Plan;
use adaptivenet_testkit::prelude::*;

const WAIT: Duration = Duration::from_secs(60);

fn images() -> std::path::PathBuf {
    repo().join("tests/fixtures/data/fmnist-test-1k-images-idx3-ubyte.gz")
}

/// Start a daemon and install `version` (renamed in); wait until it serves.
fn serving(root: &std::path::Path, extra: &str, version: u64) -> Daemon {
    let d = Daemon::start(root, extra);
    drop_bundle(
        &d.bundle_dir,
        &format!("fmnist-v{version}.bundle"),
        &signed_bundle(version),
    );
    d.wait_for("the bundle to serve", WAIT, |a| {
        served_version(a) == Some(version)
    });
    d
}

#[test]
fn a_bundle_written_in_two_steps_is_loaded_only_when_complete() {
    let tmp = TempDir::new("twostep");
    let d = Daemon::start(tmp.path(), "watch: {settle_s: 5}\n");
    assert_eq!(
        d.client().get("/v2/health/ready").unwrap().status,
        503,
        "no model yet"
    );
    let bytes = signed_bundle(1);
    let path = d.bundle_dir.join("fmnist.bundle");
    let mut f = std::fs::File::create(&path).expect("create");
    write_all(&mut f, &bytes[..bytes.len() / 2]);
    // Half written (file still open): not loaded, not rejected, for the
    // 3 s it is given (settle_s is 5).
    holds_for(
        "the half-written bundle not being taken",
        Duration::from_secs(3),
        || {
            let a = d.adaptation();
            a["active_subnet"].is_null() && a["rejected"].as_array().is_some_and(Vec::is_empty)
        },
    );
    let a = d.adaptation();
    assert!(
        a["active_subnet"].is_null(),
        "a half-written bundle was loaded: {a:#}"
    );
    assert_eq!(
        a["rejected"].as_array().map(Vec::len),
        Some(0),
        "a half-written bundle was judged: {a:#}"
    );
    assert_eq!(d.client().get("/v2/health/ready").unwrap().status, 503);
    write_all(&mut f, &bytes[bytes.len() / 2..]);
    drop(f);
    let t = Instant::now();
    d.wait_for("the completed bundle to serve", WAIT, |a| {
        served_version(a) == Some(1)
    });
    let took = t.elapsed();
    println!(
        "two-step drop: serving {:.0} ms after the file was completed and closed",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(d.client().get("/v2/health/ready").unwrap().status, 200);
    let body = infer_body("FP32", &[1, 1, 28, 28], &vec![0.0; 784]);
    assert_eq!(infer(&mut d.client(), &body).status, 200);
    assert!(
        !path.exists(),
        "an installed bundle is removed from the drop folder"
    );
}

#[test]
fn without_events_a_renamed_bundle_is_loaded_once_it_settles() {
    let tmp = TempDir::new("poll");
    let d = Daemon::start(
        tmp.path(),
        "watch: {events: false, settle_s: 1, poll_interval_s: 0.2}\n",
    );
    assert!(d.log_text().contains("polling"), "{}", d.log_text());
    let t = Instant::now();
    drop_bundle(&d.bundle_dir, "v1.bundle", &signed_bundle(1));
    d.wait_for("the bundle to serve by polling", WAIT, |a| {
        served_version(a) == Some(1)
    });
    let took = t.elapsed();
    println!(
        "polling fallback: serving {:.0} ms after the drop (settle 1 s)",
        took.as_secs_f64() * 1e3
    );
    assert!(
        took >= Duration::from_millis(900),
        "loaded before it settled: {took:?}"
    );
}

#[test]
fn bad_bundles_are_rejected_while_requests_keep_succeeding() {
    let tmp = TempDir::new("reject");
    let d = serving(tmp.path(), "worker_threads: 1\nqueue_depth: 16\n", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client_thread = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), d.addr);
        std::thread::spawn(move || {
            let mut c = Client::new(addr).with_timeout(Duration::from_secs(30));
            let body = infer_body("FP32", &[1, 1, 28, 28], &vec![0.1; 784]);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut failures = Vec::new();
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match c.post("/v2/models/fmnist-resnet/infer", &body) {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        failures.push(format!("{} {}", r.status, r.text()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        failures.push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            failures
        })
    };
    drop_bundle(&d.bundle_dir, "corrupt.bundle", &corrupt_bundle(3));
    drop_bundle(&d.bundle_dir, "badsig.bundle", &badly_signed_bundle(4));
    drop_bundle(&d.bundle_dir, "older.bundle", &signed_bundle(1));
    let a = d.wait_for("three rejections", WAIT, |a| {
        a["rejected"].as_array().is_some_and(|r| r.len() >= 3)
    });
    let reason_of = |file: &str| -> String {
        a["rejected"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["file"] == file))
            .and_then(|x| x["reason"].as_str())
            .unwrap_or_else(|| panic!("{file} not in rejected: {a:#}"))
            .to_string()
    };
    let (corrupt, badsig, older) = (
        reason_of("corrupt.bundle"),
        reason_of("badsig.bundle"),
        reason_of("older.bundle"),
    );
    println!("corrupt: {corrupt}\nbad signature: {badsig}\nolder: {older}");
    assert!(
        corrupt.contains("checksum") || corrupt.contains("tar") || corrupt.contains("archive"),
        "{corrupt}"
    );
    assert!(badsig.contains("manifest.sig does not match"), "{badsig}");
    assert!(
        older.contains("version 1 is older than the installed version 2"),
        "{older}"
    );
    for f in ["corrupt.bundle", "badsig.bundle", "older.bundle"] {
        let moved = d.bundle_dir.join("rejected").join(f);
        assert!(moved.is_file(), "{} missing", moved.display());
        let reason =
            std::fs::read_to_string(format!("{}.reason", moved.display())).expect(".reason file");
        assert!(reason.contains("reason: "), "{reason}");
        assert!(
            d.log_text().contains(&format!("rejected bundle {f}: ")),
            "log lacks the rejection of {f}"
        );
    }
    assert_eq!(
        served_version(&d.adaptation()),
        Some(2),
        "the good bundle keeps serving"
    );
    // A good, newer bundle now swaps in under the same load.
    drop_bundle(&d.bundle_dir, "v5.bundle", &signed_bundle(5));
    d.wait_for("v5 to serve", WAIT, |a| served_version(a) == Some(5));
    let after = ok.load(Ordering::Relaxed);
    wait_until("requests on v5", WAIT, || {
        ok.load(Ordering::Relaxed) >= after + 10
    });
    stop.store(true, Ordering::Relaxed);
    let failures = client_thread.join().expect("client thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("client during rejections and a swap: {ok} requests ok, {failed} failed");
    assert!(ok > 10, "too few requests were sent: {ok}");
    assert_eq!(failed, 0, "failures: {failures:?}");
}

#[test]
fn after_kill_9_it_serves_again_within_2_s_without_searching() {
    let tmp = TempDir::new("kill9");
    let mut d = serving(tmp.path(), "", 1);
    d.wait_for("the search result", WAIT, |a| {
        a["search"]["method"].is_string()
    });
    assert!(d.log_text().contains("search started"));
    d.kill9();
    let mut d2 = Daemon::start(tmp.path(), "");
    let body = infer_body("FP32", &[1, 1, 28, 28], &vec![0.0; 784]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = d2.client();
    loop {
        if c.post("/v2/models/fmnist-resnet/infer", &body)
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving after restart; log:\n{}",
            d2.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = d2.started.elapsed();
    println!(
        "restart after kill -9: first successful infer {:.0} ms after spawn",
        took.as_secs_f64() * 1e3
    );
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    let a = d2.adaptation();
    assert_eq!(served_version(&a), Some(1));
    assert!(
        a["swaps"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("stored search result"),
        "{a:#}"
    );
    // Restored with its stored result, so no search was queued (restore
    // runs before the first request is answered).
    assert!(
        !d2.log_text().contains("search started"),
        "searched again:\n{}",
        d2.log_text()
    );
    d2.kill9();
}

/// Reference logits: the materialised oracle path on tract, in-process.
fn reference(bundle: &Bundle, input: &adaptivenet_onnx::tract_onnx::prelude::Tensor) -> Vec<f32> {
    let model = materialise_subnet(bundle, &bundle.manifest.oracle_subnet()).expect("materialise");
    let plan = Plan::whole_model(&model, input.shape()[0]).expect("plan");
    let out = plan.run(input.clone()).expect("run");
    let got: Vec<f32> = out
        .to_plain_array_view::<f32>()
        .expect("f32")
        .iter()
        .copied()
        .collect();
    // The oracle path is the oracle itself: the fixture run whole agrees.
    let oracle = adaptivenet_onnx::load_model(adaptivenet_testkit::fixtures::oracle_path())
        .expect("oracle fixture");
    let whole = Plan::whole_model(&oracle, input.shape()[0])
        .expect("plan")
        .run(input.clone())
        .expect("run");
    let whole: Vec<f32> = whole
        .to_plain_array_view::<f32>()
        .expect("f32")
        .iter()
        .copied()
        .collect();
    let diff = got
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff <= 1e-5,
        "materialised oracle path vs the fixture: {diff}"
    );
    got
}

fn logits_of(r: &Response) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().expect("json");
    let o = &v["outputs"][0];
    assert_eq!(o["name"], "logits");
    assert_eq!(o["datatype"], "FP32");
    let shape = o["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|x| x.as_u64().expect("dim") as usize)
        .collect();
    let data = o["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    (shape, data)
}

#[test]
fn infer_answers_match_materialise_and_tract() {
    let tmp = TempDir::new("match");
    let d = serving(tmp.path(), "", 1);
    let bundle_bytes = signed_bundle(1);
    let bpath = tmp.path().join("ref.bundle");
    std::fs::write(&bpath, &bundle_bytes).expect("write");
    let bundle = Bundle::open(&bpath, &[], true).expect("open");
    let pp = &bundle.manifest.input.preprocess;
    let pre = Preprocess {
        mean: pp.mean.clone(),
        std: pp.std.clone(),
    };
    let n = 5;
    let ds = Dataset::from_idx(&images(), None, &pre, 0..n).expect("dataset");
    let input = ds.batch(0, n).expect("batch");
    let want = reference(&bundle, &input);
    let mut c = d.client();
    // FP32, batch 5.
    let data: Vec<f64> = ds.data.iter().map(|&x| x as f64).collect();
    let (shape, got) = logits_of(&infer(&mut c, &infer_body("FP32", &[n, 1, 28, 28], &data)));
    assert_eq!(shape, vec![n, 10]);
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("FP32 batch {n}: max |daemon - tract in-process| = {diff:e}");
    assert!(diff <= 1e-5, "{diff}");
    // UINT8 raw pixels, [N, H, W] and [N, 1, H, W]; the daemon preprocesses.
    let raw = read_idx(images()).expect("idx");
    let pixels: Vec<f64> = raw.data[..n * 784].iter().map(|&p| p as f64).collect();
    for shape in [vec![n, 28, 28], vec![n, 1, 28, 28]] {
        let (s, got) = logits_of(&infer(&mut c, &infer_body("UINT8", &shape, &pixels)));
        assert_eq!(s, vec![n, 10]);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("UINT8 {shape:?}: max |daemon - tract in-process| = {diff:e}");
        assert!(diff <= 1e-5, "{diff}");
    }
    // Batch 1 equals the first row.
    let (_, one) = logits_of(&infer(
        &mut c,
        &infer_body("FP32", &[1, 1, 28, 28], &data[..784]),
    ));
    let diff = one
        .iter()
        .zip(&want[..10])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "batch 1: {diff}");
    // The id is echoed; model name and version are set.
    let r = infer(&mut c, &infer_body("FP32", &[1, 1, 28, 28], &data[..784]))
        .json()
        .expect("json");
    assert_eq!(
        (
            r["id"].as_str(),
            r["model_name"].as_str(),
            r["model_version"].as_str()
        ),
        (Some("t"), Some("fmnist-resnet"), Some("1"))
    );
}

#[test]
fn protocol_endpoints_and_malformed_requests() {
    let tmp = TempDir::new("proto");
    let d = serving(tmp.path(), "", 1);
    let mut c = d.client();
    assert_eq!(c.get("/v2/health/live").unwrap().status, 200);
    assert_eq!(c.get("/v2/health/ready").unwrap().status, 200);
    assert_eq!(c.get("/v2/models/fmnist-resnet/ready").unwrap().status, 200);
    let meta = d.get_json("/v2");
    assert_eq!(meta["name"], "adaptived");
    let m = d.get_json("/v2/models/fmnist-resnet");
    assert_eq!(m["inputs"][0]["shape"], serde_json::json!([-1, 1, 28, 28]));
    assert_eq!(m["outputs"][0]["shape"], serde_json::json!([-1, 10]));
    assert_eq!(
        d.get_json("/v2/models/fmnist-resnet/versions/1")["name"],
        "fmnist-resnet"
    );
    let idx = c
        .post("/v2/repository/index", b"{}")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(idx[0]["state"], "READY");
    assert_eq!(c.get("/v2/models/other").unwrap().status, 404);
    assert_eq!(
        c.get("/v2/models/fmnist-resnet/versions/9/ready")
            .unwrap()
            .status,
        404
    );
    let zeros = vec![0.0; 784];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "invalid infer request"),
        (b"{}".to_vec(), "missing field `inputs`"),
        (br#"{"inputs": []}"#.to_vec(), "the model takes exactly one"),
        (
            infer_body("FP32", &[1, 1, 28, 27], &zeros),
            "does not fit the model's input",
        ),
        (
            infer_body("FP32", &[1, 1, 28, 28], &zeros[..700]),
            "700 values",
        ),
        (
            infer_body("INT64", &[1, 1, 28, 28], &zeros),
            "`INT64` is not supported",
        ),
        (
            infer_body("UINT8", &[1, 28, 28], &vec![300.0; 784]),
            "not a UINT8 value",
        ),
        (
            infer_body("FP32", &[1000, 1, 28, 28], &zeros),
            "at most 64 per request",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1,1,28,28],"datatype":"FP32","data":[]}]}"#
                .to_vec(),
            "the model's input is `input`",
        ),
        (
            br#"{"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","data":["a"]}]}"#
                .to_vec(),
            "invalid infer request",
        ),
        (
            br#"{"inputs":[{"name":"input","shape":[0,1,28,28],"datatype":"FP32","data":[]}]}"#
                .to_vec(),
            "shape[0]",
        ),
    ];
    for (body, expect) in cases {
        let r = infer(&mut c, &body);
        assert_eq!(
            r.status,
            400,
            "{} -> {}",
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            r.text()
        );
        let err = r.json().expect("json")["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(err.contains(expect), "expected `{expect}` in `{err}`");
    }
    // Nested data is accepted too.
    let nested = serde_json::json!({"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","data":[[vec![vec![0.0; 28]; 28]]]}]});
    assert_eq!(
        infer(&mut c, &serde_json::to_vec(&nested).unwrap()).status,
        200
    );
    let metrics = c.get("/metrics").unwrap().text();
    for needle in [
        "adaptived_requests_total",
        "adaptived_request_failures_total{model=\"fmnist-resnet\",reason=\"bad_request\"} 11",
        "adaptived_request_duration_seconds_bucket",
        "adaptived_active_subnet{model=\"fmnist-resnet\",version=\"1\",subnet=\"b0 b1 b2 b3 b4 b5 b6 b7 b8\"} 1",
        "adaptived_swaps_total",
    ] {
        assert!(metrics.contains(needle), "metrics lack `{needle}`:\n{metrics}");
    }
    let a = d.adaptation();
    for key in [
        "active_subnet",
        "budget_ms",
        "predicted_ms",
        "measured_ms",
        "front",
        "bundle",
        "rejected",
        "swaps",
    ] {
        assert!(a.get(key).is_some(), "/adaptation lacks `{key}`: {a:#}");
    }
    assert!(
        a["measured_ms"]["p50"].is_number() && a["measured_ms"]["p95"].is_number(),
        "{a:#}"
    );
    assert_eq!(a["bundle"]["sha256"].as_str().map(str::len), Some(64));
}

#[test]
fn a_full_queue_answers_503() {
    let tmp = TempDir::new("queue");
    let d = serving(tmp.path(), "worker_threads: 1\nqueue_depth: 1\n", 1);
    let body = Arc::new(infer_body("FP32", &[64, 1, 28, 28], &vec![0.5; 64 * 784]));
    // Warm the batch-64 plan so the burst measures queueing, not compiling.
    assert_eq!(infer(&mut d.client(), &body).status, 200);
    let barrier = Arc::new(std::sync::Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (body, barrier, addr) = (body.clone(), barrier.clone(), d.addr);
            std::thread::spawn(move || {
                let mut c = Client::new(addr).with_timeout(Duration::from_secs(60));
                barrier.wait();
                c.post("/v2/models/fmnist-resnet/infer", &body)
                    .map(|r| r.status)
                    .unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    println!("12 concurrent batch-64 requests, 1 worker, queue 1: {ok} answered 200, {busy} answered 503");
    assert_eq!(ok + busy, statuses.len(), "{statuses:?}");
    assert!(busy >= 1 && ok >= 1, "{statuses:?}");
    let metrics = d.client().get("/metrics").unwrap().text();
    assert!(
        metrics.contains(&format!(
            "adaptived_request_failures_total{{model=\"fmnist-resnet\",reason=\"busy\"}} {busy}"
        )),
        "{metrics}"
    );
}

#[test]
fn unix_socket_listener() {
    use std::io::{Read, Write};
    let tmp = TempDir::new("unix");
    let sock = tmp.path().join("a.sock");
    let config = tmp.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "bundle_dir: {}/b\nstate_dir: {}/s\nallow_unsigned: true\n",
            tmp.path().display(),
            tmp.path().display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args([
            "--config",
            &config.display().to_string(),
            "--listen",
            &format!("unix:{}", sock.display()),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) {
            s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            break out;
        }
        assert!(Instant::now() < deadline, "no unix socket");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_bad_key() {
    let tmp = TempDir::new("check");
    let good = tmp.path().join("good.yaml");
    std::fs::write(&good, "latency_budget:\n  ms: 3\nqueue_depth: 4\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args([
            "check-config",
            "--config",
            &good.display().to_string(),
            "--listen",
            "127.0.0.1:9999",
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listen: 127.0.0.1:9999")
            && stdout.contains("queue_depth: 4")
            && stdout.contains("ms: 3"),
        "{stdout}"
    );
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "queue_depth: 4\npolicy:\n  cooldown_s: 3\n  colour: red\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args(["check-config", "--config", &bad.display().to_string()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("colour") && stderr.contains("line 4"),
        "{stderr}"
    );
    let bad = tmp.path().join("bad2.yaml");
    std::fs::write(&bad, "queue_depth: 4\nlatency_budget:\n  fraction: 1.5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args(["check-config", "--config", &bad.display().to_string()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("latency_budget.fraction") && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[test]
fn demo_serves_and_prints_a_curl_example() {
    use std::io::Read;
    // The demo's files are found from the current folder (the repository
    // root for `cargo run`); cargo runs tests from `daemon/`, so name it.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args(["--demo", "--listen", "127.0.0.1:0"])
        .env("ADAPTIVENET_DEMO_ROOT", repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    // The example is printed once the daemon listens; read until it is there.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("/metrics") {
                let _ = tx.send(text.clone());
            }
        }
    });
    let text = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no curl example from --demo")
        });
    println!("{text}");
    let line = text
        .lines()
        .find(|l| l.contains("/infer"))
        .expect("an infer example");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("url");
    let file = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix('@'))
        .expect("@file");
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .expect("addr");
    let body = std::fs::read(file).expect("request file");
    let r = Client::new(addr)
        .post("/v2/models/fmnist-resnet/infer", &body)
        .expect("infer");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    let logits: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let best = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    assert_eq!(best, 9, "the first test image is an ankle boot: {logits:?}");
    // SIGTERM: a clean stop that removes the demo's temp folder.
    let demo_dir = std::path::Path::new(file).parent().unwrap().to_path_buf();
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "{status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("--demo did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!demo_dir.exists(), "{} left behind", demo_dir.display());
}

#[test]
fn the_example_config_passes_check_config_once_its_key_exists() {
    let tmp = TempDir::new("example");
    let example = std::fs::read_to_string(repo().join("systemd/config.yaml.example")).unwrap();
    assert!(
        example.lines().take(6).any(|l| l.contains("check-config")),
        "the example's first lines should say how it passes check-config"
    );
    // The shipped key path, pointed at the demo key.
    let text = example.replace(
        "/etc/adaptivenet/keys/release.pub",
        &demo_pub().display().to_string(),
    );
    let file = tmp.path().join("config.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args(["check-config", "--config", &file.display().to_string()])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A missing config: the OS error is printed once.
    let missing = tmp.path().join("nope.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args(["check-config", "--config", &missing.display().to_string()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    // Type errors in plain words.
    std::fs::write(&file, "queue_depth: many\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adaptived"))
        .args(["check-config", "--config", &file.display().to_string()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("whole number") && !stderr.contains("usize"),
        "{stderr}"
    );
}
