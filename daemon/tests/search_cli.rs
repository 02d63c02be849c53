//! `adaptived search` as a real process on the real (untrained) bundle:
//! JSON/SVG output, the cache (a second run loads it in under a second), and
//! bad input (bad checksum, bad signature, data of the wrong shape, a budget
//! below the fastest subnet) with clear messages and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn adaptived() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adaptived"));
    c.env("RUST_LOG", "warn");
    c
}

/// A fast search: merge-only space (149 subnets, exhaustive), 200 images.
fn search_cmd(bundle: &Path, state: &Path, extra: &[&str]) -> Command {
    let mut c = adaptived();
    c.arg("--state-dir").arg(state).arg("search");
    c.arg("--bundle").arg(bundle);
    c.arg("--pubkey")
        .arg(adaptivenet_testkit::fixtures::demo_pub());
    c.args([
        "--data",
        &adaptivenet_testkit::fixtures::subset_source("[0:200]"),
    ]);
    c.args([
        "--holdout",
        &adaptivenet_testkit::fixtures::subset_source("[200:400]"),
    ]);
    c.args([
        "--space",
        "merge",
        "--runs",
        "11",
        "--warmup",
        "3",
        "--check-sample",
        "4",
    ]);
    c.args(extra);
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn no_panic(o: &Output) {
    let t = text(o);
    assert!(!t.contains("panicked"), "{t}");
    assert!(!t.contains("RUST_BACKTRACE"), "{t}");
}

#[test]
fn search_writes_json_and_svg_and_a_second_run_loads_the_cache_in_under_a_second() {
    let tmp = adaptivenet_testkit::TempDir::new("cli");
    let dir = tmp.path().to_path_buf();
    let bundle = adaptivenet_testkit::bundles::untrained_bundle_path();
    let state = dir.join("state");
    let (json, svg) = (dir.join("r.json"), dir.join("r.svg"));
    let o = search_cmd(&bundle, &state, &["--budget-frac", "0.6"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    no_panic(&o);
    println!("{}", String::from_utf8_lossy(&o.stdout));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in ["measured_ms", "accuracy", "holdout_accuracy"] {
        assert!(v["oracle"][k].is_number(), "oracle.{k}: {v}");
    }
    for k in [
        "subnet",
        "predicted_ms",
        "measured_ms",
        "accuracy",
        "holdout_accuracy",
    ] {
        assert!(!v["chosen"][k].is_null(), "chosen.{k}");
    }
    assert!(v["budget_ms"].is_number() && v["search_seconds"].is_number());
    let front = v["front"].as_array().unwrap();
    assert!(front.len() >= 2);
    for p in front {
        assert!(
            p["subnet"].is_string() && p["predicted_ms"].is_number() && p["accuracy"].is_number()
        );
    }
    assert_eq!(v["method"], "exhaustive");
    let budget = v["budget_ms"].as_f64().unwrap();
    assert!(v["chosen"]["predicted_ms"].as_f64().unwrap() <= budget);
    assert_eq!(v["from_cache"], false);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg_text.starts_with("<svg") && svg_text.contains("circle"),
        "not an SVG chart"
    );
    // the cache: a second run does not search again
    let cached: Vec<PathBuf> = std::fs::read_dir(state.join("search"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let t = Instant::now();
    let o2 = search_cmd(&bundle, &state, &["--budget-frac", "0.6"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert!(o2.status.success(), "{}", text(&o2));
    let v2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v2["from_cache"], true);
    let load = v2["cache_load_seconds"].as_f64().unwrap();
    println!("second run: cache loaded in {load:.3} s, whole process {wall:.2} s");
    assert!(load < 1.0, "{load}");
    assert!(wall < 10.0, "{wall}");
    assert_eq!(v2["chosen"]["subnet"], v["chosen"]["subnet"]);
    assert_eq!(v2["front"], v["front"]);
    assert!(String::from_utf8_lossy(&o2.stdout).contains("loaded from"));
    // a budget below the fastest subnet: clear message, fastest chosen, flagged
    let o3 = search_cmd(&bundle, &state, &["--budget-ms", "0.001"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o3.status.success(), "{}", text(&o3));
    no_panic(&o3);
    let err = String::from_utf8_lossy(&o3.stderr);
    assert!(err.contains("below the fastest subnet"), "{}", text(&o3));
    let v3: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v3["chosen"]["over_budget"], true);
    let fastest = front
        .iter()
        .map(|p| p["predicted_ms"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(v3["chosen"]["predicted_ms"].as_f64().unwrap(), fastest);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rewrite one tar entry of a bundle in place (same length).
fn corrupt(bundle: &Path, out: &Path, entry: &str) {
    let mut bytes = std::fs::read(bundle).unwrap();
    // tar: 512-byte headers, name at offset 0, size (octal) at 124
    let mut at = 0;
    loop {
        let name = String::from_utf8_lossy(&bytes[at..at + 100])
            .trim_end_matches('\0')
            .to_string();
        assert!(!name.is_empty(), "no entry {entry}");
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&bytes[at + 124..at + 136])
                .trim_matches(|c: char| c == '\0' || c == ' '),
            8,
        )
        .unwrap();
        if name == entry {
            let p = at + 512 + size / 2;
            bytes[p] ^= 0x5a;
            break;
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    std::fs::write(out, bytes).unwrap();
}

#[test]
fn bad_inputs_give_clear_messages_and_no_panic() {
    let tmp = adaptivenet_testkit::TempDir::new("bad");
    let dir = tmp.path().to_path_buf();
    let bundle = adaptivenet_testkit::bundles::untrained_bundle_path();
    let state = dir.join("state");
    // a bad checksum
    let bad = dir.join("bad-checksum.bundle");
    corrupt(&bundle, &bad, "supernet.onnx");
    let o = search_cmd(&bad, &state, &[]).output().unwrap();
    assert!(!o.status.success());
    no_panic(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("checksum mismatch") && e.contains("supernet.onnx"),
        "{}",
        text(&o)
    );
    // a bad signature: the manifest changed after signing
    let bad = dir.join("bad-signature.bundle");
    corrupt(&bundle, &bad, "manifest.yaml");
    let o = search_cmd(&bad, &state, &[]).output().unwrap();
    assert!(!o.status.success());
    no_panic(&o);
    let e = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(e.contains("signature"), "{}", text(&o));
    // no trusted key given
    let o = adaptived()
        .arg("search")
        .arg("--bundle")
        .arg(&bundle)
        .args([
            "--data",
            &adaptivenet_testkit::fixtures::subset_source("[0:10]"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--pubkey"),
        "{}",
        text(&o)
    );
    // data of the wrong shape: an NPY of [4, 1, 20, 20]
    let npy = dir.join("wrong.npy");
    let mut h = String::from("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1, 20, 20), }");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(vec![0u8; 4 * 400 * 4]);
    std::fs::write(&npy, b).unwrap();
    let mut c = adaptived();
    c.arg("search")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(adaptivenet_testkit::fixtures::demo_pub());
    c.arg("--data").arg(format!("npy:{}", npy.display()));
    let o = c.output().unwrap();
    assert!(!o.status.success());
    no_panic(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("[1, 20, 20]") && e.contains("[1, 28, 28]"),
        "{}",
        text(&o)
    );
    // a data source that does not exist
    let mut c = adaptived();
    c.arg("search")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--pubkey")
        .arg(adaptivenet_testkit::fixtures::demo_pub());
    c.args(["--data", "idx:/nonexistent/images.gz"]);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    no_panic(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/images.gz"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
