//! `bench_daemon`: what the daemon costs on top of the model.
//!
//! Starts the real `adaptived` (next to this binary, or `$ADAPTIVED_BIN`) on
//! a free loopback port with a signed oracle-only bundle of the fixture,
//! then prints:
//! - request overhead: HTTP/JSON infer, HTTP with the KServe binary
//!   tensor data extension (binary input, as Triton clients send it) and
//!   gRPC `ModelInfer` with raw contents, at batch 1 (keep-alive, one
//!   connection each) against running the same plan in-process with tract
//!   (interleaved runs in the same process, medians, and ratios);
//! - the daemon's resident memory (RSS, peak) against the bundle size;
//! - the daemon's CPU use while idle, over a few seconds.
//!
//! `cargo build --release -p adaptivenet-daemon && cargo run --release -p adaptivenet-tests --bin bench_daemon -- [--runs N] [--idle-seconds S]`

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use adaptivenet_daemon::engine::Engine;
use adaptivenet_daemon::grpc::pb;
use adaptivenet_onnx::bundle::Bundle;
use adaptivenet_onnx::measure::median;
use adaptivenet_testkit::bundles::{demo_public_key, drop_bundle, signed_bundle};
use adaptivenet_testkit::{adaptived_bin, fixtures, Daemon, TempDir};
use anyhow::{anyhow, bail, Result};

fn arg(name: &str, default: u64) -> Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{name} needs a whole number")),
        None => Ok(default),
    }
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn main() -> Result<()> {
    let runs = arg("--runs", 500)? as usize;
    let idle_s = arg("--idle-seconds", 5)?;
    let work = TempDir::new("bench");
    let bytes = signed_bundle(1);
    let bundle_size = bytes.len() as u64;
    let daemon = Daemon::start(work.path(), "worker_threads: 1\ngrpc_listen: 127.0.0.1:0\n");
    let pid = daemon.child.id();
    let rss_empty = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    // Install the bundle (renamed in) and wait until it serves.
    drop_bundle(&daemon.bundle_dir, "fmnist.bundle", &bytes);
    let mut c = daemon.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.get("/v2/health/ready").map(|r| r.status).unwrap_or(0) != 200 {
        if Instant::now() > deadline {
            bail!(
                "the daemon did not load the bundle; log:\n{}",
                daemon.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let bundle_path = work.path().join("fmnist.bundle");
    std::fs::write(&bundle_path, &bytes)?;

    // One real image, as FP32 and for the in-process plan.
    let bundle = Bundle::open(&bundle_path, &[demo_public_key()], false)?;
    let engine = Engine::build(&bundle, &bundle.manifest.oracle_subnet())?;
    let raw = adaptivenet_onnx::idx::read_idx(fixtures::subset_files().0)?;
    let image: Vec<f32> = engine.preprocess_u8(raw.item(0));
    let body = serde_json::to_vec(&serde_json::json!({
        "inputs": [{ "name": bundle.manifest.input.name, "shape": [1, 1, 28, 28], "datatype": "FP32", "data": image }]
    }))?;
    // The same image with the binary tensor data extension.
    let head = serde_json::to_vec(&serde_json::json!({
        "inputs": [{ "name": bundle.manifest.input.name, "shape": [1, 1, 28, 28], "datatype": "FP32",
                     "parameters": { "binary_data_size": image.len() * 4 } }]
    }))?;
    let head_len = head.len().to_string();
    let mut binary = head;
    binary.extend(image.iter().flat_map(|f| f.to_le_bytes()));
    let bin_headers = [
        ("Content-Type", "application/octet-stream"),
        ("Inference-Header-Content-Length", head_len.as_str()),
    ];
    let input = engine.tensor(1, image.clone())?;
    let log = daemon.log_text();
    let grpc_addr = log
        .split("gRPC listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .ok_or_else(|| anyhow!("no gRPC address in the daemon's log"))?
        .to_string();
    let mut grpc = GrpcClient::connect(&grpc_addr)?;
    let grpc_req = pb::ModelInferRequest {
        model_name: bundle.manifest.model.name.clone(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: bundle.manifest.input.name.clone(),
            datatype: "FP32".into(),
            shape: vec![1, 1, 28, 28],
            ..Default::default()
        }],
        raw_input_contents: vec![image.iter().flat_map(|f| f.to_le_bytes()).collect()],
        ..Default::default()
    };
    let path = format!("/v2/models/{}/infer", bundle.manifest.model.name);
    for _ in 0..50 {
        engine.run(input.clone())?;
        let r = c.post(&path, &body)?;
        if r.status != 200 {
            bail!("infer answered {}: {}", r.status, r.text());
        }
        let r = c.post_with(&path, &bin_headers, &binary)?;
        if r.status != 200 {
            bail!("binary infer answered {}: {}", r.status, r.text());
        }
        grpc.infer(grpc_req.clone())?;
    }
    let (mut local, mut http) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let mut http_bin = Vec::with_capacity(runs);
    let mut grpc_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        engine.run(input.clone())?;
        local.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let r = c.post(&path, &body)?;
        http.push(t.elapsed().as_secs_f64() * 1e3);
        if r.status != 200 {
            bail!("infer answered {}", r.status);
        }
        let t = Instant::now();
        let r = c.post_with(&path, &bin_headers, &binary)?;
        http_bin.push(t.elapsed().as_secs_f64() * 1e3);
        if r.status != 200 {
            bail!("binary infer answered {}", r.status);
        }
        let t = Instant::now();
        grpc.infer(grpc_req.clone())?;
        grpc_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (ml, mh) = (median(&mut local), median(&mut http));
    let mb = median(&mut http_bin);
    let mg = median(&mut grpc_ms);
    let rss = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);

    // Idle CPU: no requests for a while (after a short pause).
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(idle_s));
    let c1 = cpu_ticks(pid).unwrap_or(0);
    let idle_pct = (c1 - c0) as f64 / clock_ticks_per_second() / t0.elapsed().as_secs_f64() * 100.0;

    println!(
        "adaptived benchmark ({} build, fmnist_resnet oracle path, {runs} interleaved runs)",
        profile(&adaptived_bin())
    );
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!("| tract in-process, batch 1 (median) | {ml:.3} ms |");
    println!("| daemon HTTP/JSON infer, batch 1, keep-alive (median) | {mh:.3} ms |");
    println!("| daemon HTTP binary tensor data infer, batch 1, keep-alive (median) | {mb:.3} ms |");
    println!("| daemon gRPC ModelInfer, raw contents, batch 1 (median) | {mg:.3} ms |");
    println!(
        "| overhead per request, JSON / binary / gRPC | {:.3} ms / {:.3} ms / {:.3} ms |",
        mh - ml,
        mb - ml,
        mg - ml
    );
    println!("| ratio daemon / in-process, JSON | {:.2} |", mh / ml);
    println!("| ratio daemon / in-process, binary | {:.2} |", mb / ml);
    println!("| ratio daemon / in-process, gRPC | {:.2} |", mg / ml);
    println!(
        "| bundle size | {:.2} MiB |",
        bundle_size as f64 / 1048576.0
    );
    println!(
        "| daemon RSS, no bundle | {:.1} MiB |",
        rss_empty as f64 / 1024.0
    );
    println!(
        "| daemon RSS, serving (peak) | {:.1} MiB ({:.1} MiB) |",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| RSS / bundle size | {:.1} |",
        rss as f64 * 1024.0 / bundle_size as f64
    );
    println!("| idle CPU over {idle_s} s | {idle_pct:.2} % of one core |");
    drop(daemon);
    Ok(())
}

/// A blocking gRPC client of the daemon's `ModelInfer` (one HTTP/2
/// connection), on a current-thread runtime.
struct GrpcClient {
    rt: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl GrpcClient {
    fn connect(addr: &str) -> Result<GrpcClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt.block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect(),
        )?;
        Ok(GrpcClient {
            rt,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    fn infer(&mut self, req: pb::ModelInferRequest) -> Result<pb::ModelInferResponse> {
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/inference.GRPCInferenceService/ModelInfer",
        );
        let grpc = &mut self.grpc;
        let resp = self.rt.block_on(async {
            grpc.ready().await?;
            let codec =
                tonic_prost::ProstCodec::<pb::ModelInferRequest, pb::ModelInferResponse>::default();
            grpc.unary(tonic::Request::new(req), path, codec)
                .await
                .map_err(anyhow::Error::from)
        })?;
        let resp = resp.into_inner();
        if resp.raw_output_contents.len() != 1 {
            bail!("gRPC answer without raw contents: {resp:?}");
        }
        Ok(resp)
    }
}

fn profile(daemon: &Path) -> &'static str {
    if daemon.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    }
}
