//! `adaptivenet elastify`, `inspect --eval` and `export-subnet` as real
//! processes on the real fixture: a small end-to-end run, and bad input that
//! must fail with a message naming the problem and leave nothing at the
//! output path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adaptivenet"))
        .args(args)
        .output()
        .expect("adaptivenet runs")
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adaptivenet-elastify-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn subset(range: &str) -> String {
    format!(
        "idx:{},{}{range}",
        fixture("data/fmnist-test-1k-images-idx3-ubyte.gz"),
        fixture("data/fmnist-test-1k-labels-idx1-ubyte.gz")
    )
}

const QUICK: &str = "model:\n  name: quick\n  mean: [0.286]\n  std: [0.353]\nbranches:\n  merge_spans: [2]\n  shrink_ratios: [0.5]\ntraining:\n  batch_size: 32\n  holdout: 32\n  stage1: {samples: 64}\n  stage2: {steps: 2}\n";

#[test]
fn small_elastify_run_makes_a_signed_bundle_that_verifies_inspects_and_exports() {
    let d = tmp("ok");
    let spec = d.join("spec.yaml");
    std::fs::write(&spec, QUICK).unwrap();
    let out = d.join("quick.bundle");
    let o = run(&[
        "elastify",
        &fixture("oracle/fmnist_resnet.onnx"),
        "--data",
        &subset("[0:200]"),
        "--spec",
        spec.to_str().unwrap(),
        "--key",
        &fixture("keys/demo.key"),
        "--seed",
        "3",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("9 blocks"), "{stdout}");
    assert!(
        stdout.contains("m0x2") && stdout.contains("s8@50"),
        "{stdout}"
    );
    let v = run(&[
        "verify",
        out.to_str().unwrap(),
        "--pubkey",
        &fixture("keys/demo.pub"),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let i = run(&["inspect", out.to_str().unwrap(), "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    let branches = m["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 9 + 8 + 9);
    assert!(branches
        .iter()
        .filter(|b| b["kind"] != "original")
        .all(|b| b["distill_loss"].as_f64().is_some()));
    // export a subnet and check tract runs it
    let sub = d.join("sub.onnx");
    let e = run(&[
        "export-subnet",
        "--bundle",
        out.to_str().unwrap(),
        "--subnet",
        "b0 m1x2 b3 s4@50 b5 b6 b7 b8",
        "-o",
        sub.to_str().unwrap(),
        "--pubkey",
        &fixture("keys/demo.pub"),
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let b = run(&["blocks", sub.to_str().unwrap()]);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    // a subnet that is not a path is refused
    let bad = run(&[
        "export-subnet",
        "--bundle",
        out.to_str().unwrap(),
        "--subnet",
        "b0 m1x2 b2",
        "-o",
        d.join("x.onnx").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(!d.join("x.onnx").exists());
    // eval prints the single-branch table
    let ev = run(&[
        "inspect",
        out.to_str().unwrap(),
        "--eval",
        &subset("[0:100]"),
    ]);
    let text = String::from_utf8_lossy(&ev.stdout);
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    assert!(
        text.contains("oracle path") && text.contains("s4@50") && text.contains("most merged"),
        "{text}"
    );
    // the same seed gives the same bundle, byte for byte
    let again = d.join("again.bundle");
    let o2 = run(&[
        "elastify",
        &fixture("oracle/fmnist_resnet.onnx"),
        "--data",
        &subset("[0:200]"),
        "--spec",
        spec.to_str().unwrap(),
        "--key",
        &fixture("keys/demo.key"),
        "--seed",
        "3",
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(o2.status.success());
    // (the signature carries a timestamp; what was trained must be identical)
    let (b1, b2) = (
        adaptivenet_onnx::bundle::Bundle::open(&out, &[], true).unwrap(),
        adaptivenet_onnx::bundle::Bundle::open(&again, &[], true).unwrap(),
    );
    assert!(
        b1.manifest_bytes == b2.manifest_bytes,
        "same seed, different manifest"
    );
    assert!(
        b1.supernet_bytes() == b2.supernet_bytes(),
        "same seed, different weights"
    );
    // a tampered bundle fails verification
    let mut bytes = std::fs::read(&out).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let tampered = d.join("tampered.bundle");
    std::fs::write(&tampered, bytes).unwrap();
    let t = run(&[
        "verify",
        tampered.to_str().unwrap(),
        "--pubkey",
        &fixture("keys/demo.pub"),
    ]);
    assert!(!t.status.success());
    let _ = std::fs::remove_dir_all(&d);
}

fn assert_fails(args: &[&str], out: &Path, needle: &str) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted: {args:?}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{} was written", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("out.bundle"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written files left: {leftovers:?}"
    );
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let d = tmp("bad");
    let out = d.join("out.bundle");
    let o = out.to_str().unwrap();
    let oracle = fixture("oracle/fmnist_resnet.onnx");
    // unknown spec key
    let spec = d.join("typo.yaml");
    std::fs::write(&spec, "branches:\n  merge_spanz: [2]\n").unwrap();
    assert_fails(
        &[
            "elastify",
            &oracle,
            "--data",
            &subset(""),
            "--spec",
            spec.to_str().unwrap(),
            "-o",
            o,
        ],
        &out,
        "merge_spanz",
    );
    // a data folder with no images
    let empty = d.join("images");
    std::fs::create_dir_all(empty.join("Trouser")).unwrap();
    let folder = format!("folder:{}", empty.display());
    assert_fails(
        &["elastify", &oracle, "--data", &folder, "-o", o],
        &out,
        "no PNG or JPEG images",
    );
    // an oracle whose weights are computed at run time (the onnx wheel's
    // light AlexNet: ConstantOfShape placeholders), not stored
    assert_fails(
        &[
            "elastify",
            &fixture("thirdparty/light_bvlc_alexnet.onnx"),
            "--data",
            &subset(""),
            "-o",
            o,
        ],
        &out,
        "has no weight",
    );
    // a corrupt key file, and a public key given as the secret key
    let key = d.join("bad.key");
    std::fs::write(&key, "untrusted comment: nothing\nAAAA\n").unwrap();
    assert_fails(
        &[
            "elastify",
            &oracle,
            "--data",
            &subset(""),
            "--key",
            key.to_str().unwrap(),
            "-o",
            o,
        ],
        &out,
        "bad.key",
    );
    assert_fails(
        &[
            "elastify",
            &oracle,
            "--data",
            &subset(""),
            "--key",
            &fixture("keys/demo.pub"),
            "-o",
            o,
        ],
        &out,
        "demo.pub",
    );
    // the print-default-spec output is a valid spec
    let p = run(&["elastify", "--print-default-spec"]);
    assert!(p.status.success());
    let text = String::from_utf8_lossy(&p.stdout);
    for key in [
        "merge_spans",
        "shrink_ratios",
        "skip_blocks",
        "stage1",
        "stage2",
        "temperature",
        "seed",
    ] {
        assert!(text.contains(key), "{key} missing from the default spec");
    }
    let _ = std::fs::remove_dir_all(&d);
}
