//! Block plans and subnet materialisation on the PyTorch-exported fixture:
//! chained plans reproduce the whole model (tract) and onnxruntime's
//! reference outputs; materialised subnets load in tract and onnxruntime and
//! compute what the chained plans compute; the fixture's top-1 through tract.

use std::process::Command;

use adaptivenet_onnx::dataset::{argmax_rows, max_abs_diff};
use adaptivenet_onnx::extract::materialise;
use adaptivenet_onnx::npy::{encode_npy_f32, read_npy};
use adaptivenet_onnx::tract_onnx::prelude::*;
use adaptivenet_onnx::{ChainedPlans, Oracle, Plan, Span};
use adaptivenet_testkit::fixtures::{fixtures, fmnist_test_full, oracle_path};

fn ref_input() -> Tensor {
    let a = read_npy(fixtures().join("oracle/ref_input.npy")).unwrap();
    Tensor::from_shape(&a.shape, &a.to_f32()).unwrap()
}

fn ort_logits() -> Tensor {
    let a = read_npy(fixtures().join("oracle/ref_logits_ort.npy")).unwrap();
    Tensor::from_shape(&a.shape, &a.to_f32()).unwrap()
}

fn slice(t: &Tensor, start: usize, n: usize) -> Tensor {
    t.slice(0, start, start + n).unwrap()
}

fn run_batched(plan_batch: usize, run: impl Fn(Tensor) -> Tensor, input: &Tensor) -> Tensor {
    let n = input.shape()[0];
    let parts: Vec<Tensor> = (0..n / plan_batch)
        .map(|k| run(slice(input, k * plan_batch, plan_batch)))
        .collect();
    Tensor::stack_tensors(0, &parts).unwrap()
}

#[test]
fn chained_block_plans_reproduce_the_whole_model_and_onnxruntime() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let input = ref_input();
    let reference = ort_logits();
    for batch in [1usize, 8] {
        let whole = oracle.whole_plan(batch).unwrap();
        let chained = oracle.block_plans(batch).unwrap();
        assert_eq!(chained.plans.len(), oracle.layout.num_blocks() + 2);
        let w = run_batched(batch, |x| whole.run(x).unwrap(), &input);
        let c = run_batched(batch, |x| chained.run(x).unwrap(), &input);
        let d_whole = max_abs_diff(&w, &c).unwrap();
        let d_ort = max_abs_diff(&reference, &c).unwrap();
        println!("batch {batch}: chained vs whole {d_whole:e}, chained vs onnxruntime {d_ort:e}");
        assert!(d_whole <= 1e-5, "batch {batch}: chained vs whole {d_whole}");
        assert!(
            d_ort <= 1e-5,
            "batch {batch}: chained vs onnxruntime {d_ort}"
        );
    }
}

/// Write `model` and `input` to a temporary directory, run onnxruntime on
/// them through tests/scripts/ort_run.py, and return its output.
fn onnxruntime(
    model: &adaptivenet_onnx::tract_onnx::pb::ModelProto,
    input: &Tensor,
    tag: &str,
) -> Tensor {
    let dir = std::env::temp_dir().join(format!("adaptivenet-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (m, i, o) = (
        dir.join("model.onnx"),
        dir.join("in.npy"),
        dir.join("out.npy"),
    );
    adaptivenet_onnx::save_model(&m, model).unwrap();
    let data: Vec<f32> = input
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    std::fs::write(&i, encode_npy_f32(input.shape(), &data)).unwrap();
    let script = fixtures().join("../scripts/ort_run.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&m)
        .arg(&i)
        .arg(&o)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "onnxruntime refused {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = read_npy(&o).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Tensor::from_shape(&a.shape, &a.to_f32()).unwrap()
}

#[test]
fn materialised_oracle_path_equals_chained_plans_in_tract_and_onnxruntime() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let path = oracle.layout.oracle_path();
    let sub = materialise(&oracle.model, &oracle.index, &path).unwrap();
    let input = slice(&ref_input(), 0, 8);
    let chained = oracle.block_plans(8).unwrap().run(input.clone()).unwrap();
    let tract_sub = Plan::whole_model(&sub, 8)
        .unwrap()
        .run(input.clone())
        .unwrap();
    assert!(max_abs_diff(&chained, &tract_sub).unwrap() <= 1e-5);
    let ort = onnxruntime(&sub, &input, "oracle-path");
    assert!(max_abs_diff(&chained, &ort).unwrap() <= 1e-5);
}

#[test]
fn materialised_subnet_that_skips_a_block_equals_its_chained_plans() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let l = &oracle.layout;
    // find a block whose input and output shapes agree and drop it
    let skip = (1..l.num_blocks())
        .find(|&i| {
            oracle.facts.get(&l.cuts[i]).unwrap().shape
                == oracle.facts.get(&l.cuts[i + 1]).unwrap().shape
        })
        .expect("the fixture has same-shape blocks");
    let mut path: Vec<Span> = vec![l.stem()];
    for i in 0..l.num_blocks() {
        if i != skip {
            path.push(l.block(i));
        }
    }
    path.push(l.head());
    let sub = materialise(&oracle.model, &oracle.index, &path).unwrap();
    assert_eq!(
        sub.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type == "Add")
            .count(),
        l.num_blocks() - 1
    );
    let facts = oracle.facts_at(4).unwrap();
    let chained = ChainedPlans::compile(&oracle.model, &oracle.index, &facts, &path).unwrap();
    let input = slice(&ref_input(), 8, 4);
    let c = chained.run(input.clone()).unwrap();
    let s = Plan::whole_model(&sub, 4)
        .unwrap()
        .run(input.clone())
        .unwrap();
    assert!(max_abs_diff(&c, &s).unwrap() <= 1e-5);
    let full = oracle.whole_plan(4).unwrap().run(input.clone()).unwrap();
    assert!(
        max_abs_diff(&c, &full).unwrap() > 1e-3,
        "dropping a block must change the output"
    );
    let ort = onnxruntime(&sub, &input, "skip");
    assert!(max_abs_diff(&c, &ort).unwrap() <= 1e-5);
}

#[test]
fn fixture_top1_on_the_full_fashion_mnist_test_set_is_at_least_91_percent() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let data = fmnist_test_full();
    assert_eq!(data.len(), 10_000);
    let labels = data.labels.as_ref().unwrap();
    let batch = 100;
    let plan = oracle.whole_plan(batch).unwrap();
    let mut correct = 0;
    for start in (0..data.len()).step_by(batch) {
        let logits = plan.run(data.batch(start, batch).unwrap()).unwrap();
        let pred = argmax_rows(&logits).unwrap();
        correct += pred
            .iter()
            .zip(&labels[start..start + batch])
            .filter(|(p, l)| **p as i64 == **l)
            .count();
    }
    let acc = correct as f64 / data.len() as f64;
    println!(
        "fixture top-1 on the 10k Fashion-MNIST test set through tract: {:.2}%",
        acc * 100.0
    );
    assert!(acc >= 0.91, "top-1 {acc}");
}
