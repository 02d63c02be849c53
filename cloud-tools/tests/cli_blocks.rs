//! `adaptivenet blocks` as a real process: tables and JSON on real models,
//! and one clear line naming the file for empty, truncated and text input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

fn blocks(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adaptivenet"))
        .arg("blocks")
        .args(args)
        .output()
        .expect("adaptivenet runs")
}

#[test]
fn prints_tables_for_the_fixture_and_third_party_graphs() {
    for (rel, n) in [
        ("oracle/fmnist_resnet.onnx", 9),
        ("thirdparty/light_resnet50.onnx", 16),
        ("thirdparty/light_squeezenet.onnx", 8),
    ] {
        let p = fixture(rel);
        let out = blocks(&[p.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("{n} blocks")), "{rel}:\n{text}");
        assert!(text.lines().any(|l| l.starts_with("stem ")));
        assert!(text.lines().any(|l| l.starts_with("head ")));
        assert_eq!(
            text.lines().filter(|l| l.starts_with('B')).count(),
            n,
            "{text}"
        );
    }
}

#[test]
fn json_has_stem_blocks_and_head() {
    let p = fixture("thirdparty/light_squeezenet.onnx");
    let out = blocks(&[p.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["blocks"].as_array().map(|a| a.len()), Some(8));
    for key in [
        "input",
        "output",
        "input_shape",
        "output_shape",
        "ops",
        "params",
        "macs",
        "op_counts",
    ] {
        assert!(!v["blocks"][0][key].is_null(), "missing {key}");
        assert!(!v["stem"][key].is_null() && !v["head"][key].is_null());
    }
    assert_eq!(v["blocks"][3]["index"], 3);
}

#[test]
fn bad_files_give_one_line_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("adaptivenet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(fixture("oracle/fmnist_resnet.onnx")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.onnx", vec![], "empty"),
        (
            "truncated.onnx",
            good[..good.len() / 2].to_vec(),
            "not a valid ONNX model",
        ),
        (
            "notes.onnx",
            b"This is a text file, not a model.\nIt has two lines.\n".to_vec(),
            "ONNX",
        ),
    ];
    for (name, bytes, problem) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let out = blocks(&[p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.contains(p.to_str().unwrap()), "{name}: {err}");
        assert!(err.contains(problem), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let missing = dir.join("missing.onnx");
    let out = blocks(&[missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.onnx"));
    let _ = std::fs::remove_dir_all(&dir);
}
