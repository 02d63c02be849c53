//! A 3-channel (RGB) model through the whole path, with real processes:
//! `adaptivenet elastify` on the committed RGB oracle (`cfmnist_rgb.onnx`,
//! NCHW, per-channel mean/std) and a folder of RGB PNGs into a signed
//! bundle; `adaptived search` on that folder; `adaptived` serving the
//! bundle; KServe v2 requests with raw UINT8 pixels in NHWC (as decoders
//! give them) and NCHW, and preprocessed FP32 in NCHW, as JSON and as binary
//! tensor data, all giving onnxruntime's logits of the oracle (within 1e-4);
//! and shapes or layouts that do not fit answered with a 400 that says why.
//!
//! Needs the `adaptivenet` and `adaptived` binaries beside the test
//! executable (`cargo test --workspace` builds them) and `python3` with
//! numpy and onnxruntime (`tests/scripts/ort_run.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use adaptivenet_onnx::dataset::Preprocess;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::npy::{encode_npy_f32, read_npy};
use adaptivenet_testkit::bundles::drop_bundle;
use adaptivenet_testkit::daemon::{adaptived_bin, adaptivenet_bin, wait_until};
use adaptivenet_testkit::fixtures::{demo_key_path, demo_pub, fixtures, repo, FMNIST_LABELS};
use adaptivenet_testkit::{Client, Daemon, TempDir};
use serde_json::{json, Value};

const MODEL: &str = "cfmnist-rgb";
/// Images sent per request.
const BATCH: usize = 4;

fn oracle() -> PathBuf {
    fixtures().join("oracle/cfmnist_rgb.onnx")
}

fn folder() -> PathBuf {
    fixtures().join("data/cfmnist-rgb-test")
}

/// The oracle's per-channel mean and std (from its metadata).
fn mean_std() -> (Vec<f32>, Vec<f32>) {
    let path = fixtures().join("oracle/cfmnist_rgb.json");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("oracle json"))
        .expect("oracle json parses");
    let list = |k: &str| -> Vec<f32> {
        meta[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k} in {}", path.display()))
            .iter()
            .map(|v| v.as_f64().expect("a number") as f32)
            .collect()
    };
    (list("mean"), list("std"))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> String {
    let t = Instant::now();
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(o.status.success(), "{what} failed:\n{}", text(&o));
    let all = text(&o);
    assert!(!all.contains("panicked"), "{what}: {all}");
    println!("{what}: {:.1} s", t.elapsed().as_secs_f64());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `BATCH` images of the folder, of different classes, as raw pixels, NHWC
/// (through the data source with an identity normalisation: x / 255, exact
/// in f32).
fn pixels_nhwc() -> Vec<u8> {
    let src: DataSource = format!("folder:{}", folder().display())
        .parse()
        .expect("source");
    let unit = Preprocess {
        mean: vec![0.0],
        std: vec![1.0],
    };
    let d = src
        .load(&[32, 32, 3], "NHWC", &unit, &[])
        .expect("the folder loads");
    assert_eq!(d.len(), 200);
    // about 20 images per class, in class order: items 0, 60, 120, 180
    let item = 32 * 32 * 3;
    let picked: Vec<f32> = (0..BATCH)
        .flat_map(|i| d.data[i * 60 * item..(i * 60 + 1) * item].iter().copied())
        .collect();
    picked
        .iter()
        .map(|&v| {
            let p = (v * 255.0).round();
            assert!((v * 255.0 - p).abs() < 1e-3 && (0.0..=255.0).contains(&p));
            p as u8
        })
        .collect()
}

/// NHWC pixels -> NCHW (index arithmetic written out here, independent
/// of the code under test).
fn nchw_u8(nhwc: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nhwc.len());
    for item in nhwc.chunks_exact(32 * 32 * 3) {
        for c in 0..3 {
            out.extend((0..32 * 32).map(|p| item[p * 3 + c]));
        }
    }
    out
}

/// `(x / 255 - mean[c]) / std[c]` in f32 of pixels in `layout`.
fn normalised(pixels: &[u8], layout: Layout, mean: &[f32], std: &[f32]) -> Vec<f32> {
    pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = match layout {
                Layout::Nchw => (i % 3072) / 1024,
                Layout::Nhwc => i % 3,
            };
            (v as f32 / 255.0 - mean[c]) / std[c]
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Layout {
    Nchw,
    Nhwc,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
    fn shape(self) -> [usize; 4] {
        match self {
            Layout::Nchw => [BATCH, 3, 32, 32],
            Layout::Nhwc => [BATCH, 32, 32, 3],
        }
    }
    fn other(self) -> Layout {
        match self {
            Layout::Nchw => Layout::Nhwc,
            Layout::Nhwc => Layout::Nchw,
        }
    }
}

/// onnxruntime's logits of `model` on `x` (in the model's layout, normalised).
fn ort_logits(dir: &Path, model: &Path, layout: Layout, x: &[f32]) -> Vec<f32> {
    let (inp, out) = (dir.join("ort_in.npy"), dir.join("ort_out.npy"));
    std::fs::write(&inp, encode_npy_f32(&layout.shape(), x)).expect("write npy");
    run(
        Command::new("python3")
            .arg(repo().join("tests/scripts/ort_run.py"))
            .arg(model)
            .arg(&inp)
            .arg(&out),
        "onnxruntime on the oracle",
    );
    let y = read_npy(&out).expect("ort output");
    assert_eq!(y.shape, vec![BATCH, 10]);
    y.to_f32()
}

fn request(datatype: &str, shape: &[usize], data: Value, layout: Option<&str>) -> Vec<u8> {
    let mut input = json!({ "name": "input", "shape": shape, "datatype": datatype, "data": data });
    if let Some(l) = layout {
        input["parameters"] = json!({ "layout": l });
    }
    serde_json::to_vec(&json!({ "id": "rgb", "inputs": [input] })).expect("json")
}

/// A binary tensor data request: the JSON header, then the raw bytes.
fn binary_request(
    datatype: &str,
    shape: &[usize],
    raw: &[u8],
    layout: Option<&str>,
) -> (Vec<u8>, String) {
    let mut params = json!({ "binary_data_size": raw.len() });
    if let Some(l) = layout {
        params["layout"] = json!(l);
    }
    let head = serde_json::to_vec(&json!({
        "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "parameters": params }],
    }))
    .expect("json");
    let len = head.len().to_string();
    let mut body = head;
    body.extend_from_slice(raw);
    (body, len)
}

fn logits(r: &adaptivenet_testkit::Response, what: &str) -> Vec<f32> {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let v = r.json().expect("json answer");
    assert_eq!(v["outputs"][0]["shape"], json!([BATCH, 10]), "{what}: {v}");
    v["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The committed oracle with an NHWC input: a Transpose to NCHW in front
/// of it, as converters from TensorFlow write them.
fn nhwc_oracle(dst: &Path) {
    use adaptivenet_onnx::tract_onnx::pb::{
        attribute_proto::AttributeType, type_proto, AttributeProto, NodeProto,
    };
    let mut m = adaptivenet_onnx::load_model(oracle()).expect("oracle loads");
    let g = m.graph.as_mut().expect("a graph");
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| *i == "input") {
            *i = "input_nchw".into();
        }
    }
    g.node.insert(
        0,
        NodeProto {
            name: "to_nchw".into(),
            op_type: "Transpose".into(),
            input: vec!["input".into()],
            output: vec!["input_nchw".into()],
            attribute: vec![AttributeProto {
                name: "perm".into(),
                r#type: AttributeType::Ints as i32,
                ints: vec![0, 3, 1, 2],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let Some(type_proto::Value::TensorType(t)) =
        g.input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        panic!("the oracle's input is not a tensor");
    };
    let dims = &mut t.shape.as_mut().expect("a shape").dim;
    let d = dims.clone();
    *dims = vec![d[0].clone(), d[2].clone(), d[3].clone(), d[1].clone()];
    adaptivenet_onnx::save_model(dst, &m).expect("write the NHWC oracle");
}

/// Elastify `model` (input in `layout`) with a tiny training budget on the
/// RGB folder into a signed bundle; returns elastify's output.
fn elastify(dir: &Path, model: &Path, name: &str, layout: Layout, bundle: &Path) -> String {
    let (mean, std) = mean_std();
    let labels: Vec<Value> = FMNIST_LABELS.iter().map(|l| json!(l)).collect();
    let spec = format!(
        "model:\n  name: {name}\n  labels: {}\n  mean: {mean:?}\n  std: {std:?}\n  layout: {}\n\
         branches:\n  merge_spans: [2]\n  shrink_ratios: [0.5]\n\
         training:\n  batch_size: 32\n  holdout: 32\n  stage1: {{samples: 64}}\n  stage2: {{steps: 2}}\n",
        Value::Array(labels),
        layout.name()
    );
    let spec_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&spec_path, &spec).expect("spec");
    let out = run(
        Command::new(adaptivenet_bin())
            .arg("elastify")
            .arg(model)
            .args([
                "--data",
                &format!("folder:{}", folder().display()),
                "--spec",
            ])
            .arg(&spec_path)
            .arg("--key")
            .arg(demo_key_path())
            .args(["--seed", "1", "--threads", "2", "-o"])
            .arg(bundle),
        &format!("elastify ({})", layout.name()),
    );
    assert!(out.contains("5 blocks"), "{out}");
    assert!(out.contains("m0x2") && out.contains("s4@50"), "{out}");
    assert!(out.contains("data: 200 samples"), "{out}");
    out
}

/// Serve `bundle` and check every way of sending the first images against
/// onnxruntime on `model`, and that what does not fit is a 400.
fn serve_and_compare(dir: &Path, bundle: &Path, model: &Path, name: &str, layout: Layout) {
    let (mean, std) = mean_std();
    let root = dir.join(format!("daemon-{}", layout.name()));
    std::fs::create_dir_all(root.join("bundles")).expect("dirs");
    let d = Daemon::start(&root, "worker_threads: 2\n");
    drop_bundle(
        &d.bundle_dir,
        "rgb.bundle",
        &std::fs::read(bundle).expect("bundle"),
    );
    let mut c = d.client();
    wait_until("the RGB bundle to serve", Duration::from_secs(60), || {
        c.get(&format!("/v2/models/{name}/ready"))
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
    let meta = d.get_json(&format!("/v2/models/{name}"));
    let mut item = vec![-1i64];
    item.extend(layout.shape()[1..].iter().map(|&v| v as i64));
    assert_eq!(meta["inputs"][0]["shape"], json!(item), "{meta}");
    assert_eq!(meta["parameters"]["layout"], layout.name());
    let note = meta["parameters"]["uint8_input"].as_str().unwrap_or("");
    assert!(note.contains("[-1, 32, 32, 3] (NHWC"), "{note}");

    // the same images every way; onnxruntime on the oracle is the reference
    let nhwc = pixels_nhwc();
    let nchw = nchw_u8(&nhwc);
    let own = match layout {
        Layout::Nchw => nchw.clone(),
        Layout::Nhwc => nhwc.clone(),
    };
    let x = normalised(&own, layout, &mean, &std);
    let want = ort_logits(dir, model, layout, &x);
    let u8s = |p: &[u8]| Value::from(p.iter().map(|&v| v as u64).collect::<Vec<_>>());
    let infer = format!("/v2/models/{name}/infer");
    let mut cases: Vec<(String, Vec<f32>)> = Vec::new();
    let mut post = |c: &mut Client, what: String, body: Vec<u8>, bin_len: Option<String>| {
        let r = match &bin_len {
            None => c.post(&infer, &body),
            Some(n) => c.post_with(
                &infer,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Inference-Header-Content-Length", n),
                ],
                &body,
            ),
        }
        .expect("infer request");
        let l = logits(&r, &what);
        cases.push((what, l));
    };
    let nhwc_shape = Layout::Nhwc.shape();
    let nchw_shape = Layout::Nchw.shape();
    post(
        &mut c,
        "UINT8 NHWC JSON, layout from the shape".into(),
        request("UINT8", &nhwc_shape, u8s(&nhwc), None),
        None,
    );
    post(
        &mut c,
        "UINT8 NHWC JSON, parameters.layout NHWC".into(),
        request("UINT8", &nhwc_shape, u8s(&nhwc), Some("NHWC")),
        None,
    );
    let (body, n) = binary_request("UINT8", &nhwc_shape, &nhwc, Some("NHWC"));
    post(&mut c, "UINT8 NHWC binary".into(), body, Some(n));
    post(
        &mut c,
        "UINT8 NCHW JSON, layout from the shape".into(),
        request("UINT8", &nchw_shape, u8s(&nchw), None),
        None,
    );
    let (body, n) = binary_request("UINT8", &nchw_shape, &nchw, Some("NCHW"));
    post(&mut c, "UINT8 NCHW binary".into(), body, Some(n));
    let floats = Value::from(x.iter().map(|&v| v as f64).collect::<Vec<_>>());
    post(
        &mut c,
        format!("FP32 {} JSON", layout.name()),
        request("FP32", &layout.shape(), floats.clone(), None),
        None,
    );
    let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (body, n) = binary_request("FP32", &layout.shape(), &raw, Some(layout.name()));
    post(
        &mut c,
        format!("FP32 {} binary", layout.name()),
        body,
        Some(n),
    );
    for (what, got) in &cases {
        let diff = max_diff(got, &want);
        println!(
            "{} model, {what}: max |adaptived - onnxruntime| = {diff:e}",
            layout.name()
        );
        assert!(diff <= 1e-4, "{what}: {diff}");
    }
    let argmax: Vec<usize> = want
        .chunks(10)
        .map(|r| (0..10).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0))
        .collect();
    println!("oracle classes of the {BATCH} images: {argmax:?}");

    // what does not fit is a 400 that says so
    let bad = |c: &mut Client, body: &[u8], what: &str, needles: &[&str]| {
        let r = c.post(&infer, body).expect("infer request");
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let e = r.json().expect("json error")["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for n in needles {
            assert!(e.contains(n), "{what}: `{n}` not in `{e}`");
        }
        println!("{what}: 400 {e}");
    };
    bad(
        &mut c,
        &request("UINT8", &[BATCH, 32, 3, 32], u8s(&nhwc), None),
        "UINT8 in neither layout",
        &[
            "as UINT8: ",
            "[-1, 3, 32, 32] (NCHW)",
            "[-1, 32, 32, 3] (NHWC)",
        ],
    );
    bad(
        &mut c,
        &request("UINT8", &nchw_shape, u8s(&nhwc), Some("NHWC")),
        "UINT8 NCHW shape declared NHWC",
        &["UINT8 with parameters.layout NHWC: [-1, 32, 32, 3] (NHWC)"],
    );
    let other = layout.other();
    bad(
        &mut c,
        &request("FP32", &other.shape(), floats.clone(), None),
        "FP32 in the other layout",
        &[&format!("(FP32, {})", layout.name())],
    );
    bad(
        &mut c,
        &request("FP32", &layout.shape(), floats, Some(other.name())),
        "FP32 declared in the other layout",
        &[&format!(
            "FP32 input is taken in the model's layout {} only",
            layout.name()
        )],
    );
    bad(
        &mut c,
        &request("UINT8", &nhwc_shape, u8s(&nhwc), Some("HWC")),
        "an unknown layout",
        &["`HWC`", "NCHW` or `NHWC`"],
    );
    let (body, _) = binary_request("UINT8", &nhwc_shape, &nhwc[..100], Some("NHWC"));
    let r = c
        .post_with(
            &infer,
            &[
                ("Content-Type", "application/octet-stream"),
                (
                    "Inference-Header-Content-Length",
                    &(body.len() - 100).to_string(),
                ),
            ],
            &body,
        )
        .expect("infer");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("binary_data_size"), "{}", r.text());
    assert_eq!(
        d.get_json("/v2/health/ready")["ready"],
        true,
        "bad requests never take the model down"
    );
}

#[test]
fn rgb_nchw_model_elastifies_searches_and_serves_uint8_nhwc_and_fp32_nchw_with_the_oracles_logits()
{
    let t0 = Instant::now();
    let tmp = TempDir::new("rgb-nchw");
    let dir = tmp.path().to_path_buf();
    let data = format!("folder:{}", folder().display());
    let bundle = dir.join("rgb.bundle");
    elastify(&dir, &oracle(), MODEL, Layout::Nchw, &bundle);

    // tract through the folder loader agrees with onnxruntime on the same
    // PNGs decoded by PIL (the fixture's JSON): RGB order and per-channel
    // normalisation are right
    let inspect = run(
        Command::new(adaptivenet_bin())
            .arg("inspect")
            .arg(&bundle)
            .args(["--eval", &data]),
        "inspect --eval",
    );
    let header = run(
        Command::new(adaptivenet_bin()).arg("inspect").arg(&bundle),
        "inspect",
    );
    assert!(header.contains("[N, 3, 32, 32] float NCHW"), "{header}");
    let (mean, std) = mean_std();
    assert!(
        header.contains(&format!("mean {mean:?} std {std:?}")),
        "{header}"
    );
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("oracle/cfmnist_rgb.json")).expect("json"),
    )
    .expect("json");
    let ort_pct = meta["ort_subset_acc"].as_f64().expect("ort_subset_acc") * 100.0;
    let line = inspect
        .lines()
        .find(|l| l.starts_with("oracle path"))
        .unwrap_or_else(|| panic!("{inspect}"));
    assert!(
        line.contains(&format!(" {ort_pct:.2} ")),
        "{line} vs {ort_pct:.2}"
    );

    // search on the folder (labelled by its sub-folders)
    let search = run(
        Command::new(adaptived_bin())
            .env("RUST_LOG", "warn")
            .arg("--state-dir")
            .arg(dir.join("search-state"))
            .arg("search")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--pubkey")
            .arg(demo_pub())
            .args(["--data", &format!("{data}[0:120]")])
            .args(["--holdout", &format!("{data}[120:200]")])
            .args(["--budget-frac", "0.8", "--threads", "2"])
            .args(["--runs", "5", "--warmup", "2", "--check-sample", "3"])
            .arg("--json")
            .arg(dir.join("search.json")),
        "adaptived search",
    );
    println!("{search}");
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("search.json")).expect("json"))
            .expect("search json");
    assert_eq!(result["method"], "exhaustive", "{result}");
    let oracle_acc = result["oracle"]["accuracy"]
        .as_f64()
        .expect("oracle accuracy");
    // ~85% on these images; a layout or channel mix-up would be near chance
    assert!(oracle_acc > 0.7, "oracle top-1 on the folder {oracle_acc}");
    let predicted = result["chosen"]["predicted_ms"].as_f64().expect("chosen");
    let budget = result["budget_ms"].as_f64().expect("budget_ms");
    assert!(predicted <= budget, "{result}");

    serve_and_compare(&dir, &bundle, &oracle(), MODEL, Layout::Nchw);
    println!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn rgb_nhwc_model_elastifies_and_serves_uint8_either_layout_and_fp32_nhwc_with_the_oracles_logits()
{
    let t0 = Instant::now();
    let tmp = TempDir::new("rgb-nhwc");
    let dir = tmp.path().to_path_buf();
    let model = dir.join("cfmnist_rgb_nhwc.onnx");
    nhwc_oracle(&model);
    let bundle = dir.join("rgb-nhwc.bundle");
    elastify(&dir, &model, "cfmnist-rgb-nhwc", Layout::Nhwc, &bundle);
    let inspect = run(
        Command::new(adaptivenet_bin()).arg("inspect").arg(&bundle),
        "inspect",
    );
    assert!(inspect.contains("[N, 32, 32, 3] float NHWC"), "{inspect}");
    serve_and_compare(&dir, &bundle, &model, "cfmnist-rgb-nhwc", Layout::Nhwc);
    search_on_the_device(&dir, &bundle);
    println!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// The daemon's own search with the RGB PNG folder as `validation_data`:
/// the images are laid out as the NHWC model takes them, so the oracle path
/// scores what it scores through onnxruntime (about 85%; a layout mix-up
/// would be near chance, and a shape mismatch would leave the accuracy
/// unmeasured).
fn search_on_the_device(dir: &Path, bundle: &Path) {
    let root = dir.join("daemon-search");
    std::fs::create_dir_all(root.join("bundles")).expect("dirs");
    let d = Daemon::start(
        &root,
        &format!(
            "worker_threads: 2\nvalidation_data:\n  images: {}\n  limit: 80\n",
            folder().display()
        ),
    );
    drop_bundle(
        &d.bundle_dir,
        "rgb.bundle",
        &std::fs::read(bundle).expect("bundle"),
    );
    let url = "/v2/models/cfmnist-rgb-nhwc/adaptation";
    wait_until("the on-device search", Duration::from_secs(300), || {
        let a = d.get_json(url);
        a["search"]["state"] == "idle" && !a["accuracy"].is_null()
    });
    let a = d.get_json(url);
    let acc = &a["accuracy"];
    println!("on-device search, NHWC bundle, 80 PNGs: {acc}");
    assert_eq!(acc["oracle_images"].as_u64(), Some(80), "{acc}");
    assert!(
        acc["oracle_pct"].as_f64().is_some_and(|p| p > 70.0),
        "{acc}\nlog:\n{}",
        d.log_text()
    );
}
