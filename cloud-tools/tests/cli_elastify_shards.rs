//! Sharded elastify as real processes: three stage-1 shard processes (the
//! index from the flag, from Kubernetes' variable, and from the Slurm
//! script with Slurm's variables) and an assemble step give the bundle one
//! process makes with the same seed, byte for byte; shard sets that are
//! incomplete, duplicated, damaged or from another run are refused by name
//! and no bundle is written. Also checks that the shipped Kubernetes
//! manifest parses and the Slurm script is valid bash.

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

/// The batch-engine variables the test process may have (CI under Slurm).
const ENGINE_VARS: [&str; 5] = [
    "JOB_COMPLETION_INDEX",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
];

fn adaptivenet(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_adaptivenet"));
    c.args(args);
    for v in ENGINE_VARS {
        c.env_remove(v);
    }
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("the process runs")
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adaptivenet-shards-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The demo bundle's spec (`demo/elastify.yaml`: its model and the default
/// branches, 33 new ones with 3-block merges whose re-created layers are
/// seeded) with a tiny training: 1 stage-1 step per branch plus 1 per extra
/// merged block, 2 stage-2 steps.
fn tiny_demo_spec() -> String {
    let demo = std::fs::read_to_string(root().join("demo/elastify.yaml")).unwrap();
    let model = &demo[..demo
        .find("\ntraining:")
        .expect("demo/elastify.yaml has training:")];
    format!(
        "{model}\ntraining:\n  batch_size: 32\n  holdout: 32\n  stage1: {{samples: 32, samples_per_extra_block: 32}}\n  stage2: {{steps: 2}}\n"
    )
}

struct Run {
    dir: PathBuf,
    oracle: String,
    data: String,
    spec: String,
}

impl Run {
    fn new(tag: &str) -> Run {
        let dir = tmp(tag);
        let spec = dir.join("spec.yaml");
        std::fs::write(&spec, tiny_demo_spec()).unwrap();
        Run {
            oracle: fixture("oracle/fmnist_resnet.onnx"),
            data: format!(
                "idx:{},{}[0:160]",
                fixture("data/fmnist-test-1k-images-idx3-ubyte.gz"),
                fixture("data/fmnist-test-1k-labels-idx1-ubyte.gz")
            ),
            spec: spec.display().to_string(),
            dir,
        }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// `elastify` on the run's oracle, data and spec, then `extra`.
    fn elastify(&self, seed: &str, threads: &str, extra: &[&str]) -> Command {
        let mut args = vec![
            "elastify",
            &self.oracle,
            "--data",
            &self.data,
            "--spec",
            &self.spec,
            "--seed",
            seed,
            "--threads",
            threads,
        ];
        args.extend_from_slice(extra);
        adaptivenet(&args)
    }

    /// An assemble of `dir` that must fail with `needle` and write nothing.
    fn refused(&self, dir: &str, seed: &str, needle: &str) {
        let out = self.path("refused.bundle");
        let o = output(self.elastify(seed, "1", &["--assemble", dir, "-o", &out]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "assembled {dir}");
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!Path::new(&out).exists(), "{out} was written");
        let leftovers: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("refused"))
            .collect();
        assert!(leftovers.is_empty(), "half-written: {leftovers:?}");
    }
}

fn copy_shards(from: &str, to: &str, which: &[usize]) {
    std::fs::create_dir_all(to).unwrap();
    for i in which {
        let name = format!("stage1-{i}-of-3.shard");
        std::fs::copy(Path::new(from).join(&name), Path::new(to).join(&name)).unwrap();
    }
}

#[test]
fn three_shard_processes_and_assemble_give_the_single_process_bundle_byte_for_byte() {
    let r = Run::new("bits");
    let shards = r.path("shards");
    let single = r.path("single.bundle");
    let assembled = r.path("assembled.bundle");

    // One process, two threads, as users run it today.
    ok(
        &output(r.elastify("3", "2", &["-o", &single])),
        "single-process elastify",
    );

    // Three shard processes at once, one thread each.
    let mut by_flag = r.elastify("3", "1", &["--stage1-shard", "0/3", "--shard-dir", &shards]);
    let mut by_k8s = r.elastify(
        "3",
        "1",
        &["--stage1-shard", "auto/3", "--shard-dir", &shards],
    );
    by_k8s.env("JOB_COMPLETION_INDEX", "1");
    let mut by_slurm = Command::new("bash");
    by_slurm
        .arg(root().join("deploy/slurm/elastify.sbatch"))
        .arg("stage1")
        .env("ADAPTIVENET", env!("CARGO_BIN_EXE_adaptivenet"))
        .env("ORACLE", &r.oracle)
        .env("DATA", &r.data)
        .env("SPEC", &r.spec)
        .env("SEED", "3")
        .env("SHARDS", "3")
        .env("THREADS", "1")
        .env("WORK", &r.dir)
        .env("SLURM_ARRAY_TASK_ID", "7")
        .env("SLURM_ARRAY_TASK_MIN", "5")
        .env("SLURM_ARRAY_TASK_COUNT", "3");
    by_slurm.env_remove("JOB_COMPLETION_INDEX");
    let children: Vec<_> = [&mut by_flag, &mut by_k8s, &mut by_slurm]
        .into_iter()
        .map(|c| {
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("a shard process starts")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().expect("a shard process runs");
        ok(&o, &format!("shard {i}"));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(&format!("stage-1 shard {i}/3")), "{text}");
    }
    for i in 0..3 {
        assert!(Path::new(&shards)
            .join(format!("stage1-{i}-of-3.shard"))
            .exists());
    }

    let a = output(r.elastify("3", "2", &["--assemble", &shards, "-o", &assembled]));
    ok(&a, "assemble");
    assert!(
        String::from_utf8_lossy(&a.stdout).contains("stage 1: 33 branches from the shard files"),
        "{}",
        String::from_utf8_lossy(&a.stdout)
    );
    let (s, b) = (
        std::fs::read(&single).unwrap(),
        std::fs::read(&assembled).unwrap(),
    );
    assert!(
        s == b,
        "the sharded bundle differs from the single-process one ({} and {} bytes)",
        s.len(),
        b.len()
    );

    // A missing shard, a shard twice, a damaged file, another seed.
    let missing = r.path("missing");
    copy_shards(&shards, &missing, &[0, 2]);
    r.refused(&missing, "3", "shard 1/3 is missing");
    let twice = r.path("twice");
    copy_shards(&shards, &twice, &[0, 1, 2]);
    std::fs::copy(
        Path::new(&shards).join("stage1-1-of-3.shard"),
        Path::new(&twice).join("again.shard"),
    )
    .unwrap();
    r.refused(&twice, "3", "is shard 1/3 and so is");
    let damaged = r.path("damaged");
    copy_shards(&shards, &damaged, &[0, 1, 2]);
    let f = Path::new(&damaged).join("stage1-2-of-3.shard");
    let mut bytes = std::fs::read(&f).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&f, bytes).unwrap();
    r.refused(
        &damaged,
        "3",
        "stage1-2-of-3.shard: the file is truncated or damaged",
    );
    r.refused(
        &shards,
        "4",
        "stage1-0-of-3.shard: was trained with seed 3, but this run has seed 4",
    );
    r.refused(&r.path("nowhere"), "3", "nowhere");

    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn shard_arguments_are_checked_before_any_work() {
    let r = Run::new("args");
    let shards = r.path("shards");
    let fails = |c: Command, needle: &str| {
        let o = output(c);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    };
    fails(
        r.elastify(
            "3",
            "1",
            &["--stage1-shard", "auto/3", "--shard-dir", &shards],
        ),
        "neither JOB_COMPLETION_INDEX",
    );
    let mut bad_index = r.elastify(
        "3",
        "1",
        &["--stage1-shard", "auto/3", "--shard-dir", &shards],
    );
    bad_index.env("JOB_COMPLETION_INDEX", "3");
    fails(bad_index, "JOB_COMPLETION_INDEX=`3`: gives shard 3");
    fails(
        r.elastify("3", "1", &["--stage1-shard", "3/3", "--shard-dir", &shards]),
        "I must be below N",
    );
    fails(
        r.elastify("3", "1", &["--stage1-shard", "0/3"]),
        "--shard-dir",
    );
    fails(
        r.elastify(
            "3",
            "1",
            &[
                "--stage1-shard",
                "0/3",
                "--shard-dir",
                &shards,
                "-o",
                "x.bundle",
            ],
        ),
        "cannot be used with",
    );
    assert!(!Path::new(&shards).exists());
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// The Kubernetes manifest parses (python3-yaml), its Indexed Job runs as
/// many pods as `auto/N` says, and both Jobs share the shard folder; the
/// Slurm script is valid bash and refuses to run without its variables.
#[test]
fn the_shipped_batch_files_are_well_formed() {
    let manifest = root().join("deploy/k8s/elastify-indexed-job.yaml");
    let o = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(&manifest)
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["PersistentVolumeClaim", "Job", "Job"]);
    let args = |d: &serde_json::Value| -> Vec<String> {
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let after = |args: &[String], flag: &str| -> String {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[i + 1].clone()
    };
    let (stage1, assemble) = (&docs[1], &docs[2]);
    assert_eq!(stage1["spec"]["completionMode"], "Indexed");
    let a1 = args(stage1);
    let n: u64 = after(&a1, "--stage1-shard")
        .strip_prefix("auto/")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(stage1["spec"]["completions"], n);
    assert_eq!(stage1["spec"]["parallelism"], n);
    let a2 = args(assemble);
    assert_eq!(after(&a1, "--shard-dir"), after(&a2, "--assemble"));
    for flag in ["--data", "--spec", "--seed"] {
        assert_eq!(after(&a1, flag), after(&a2, flag), "{flag}");
    }
    assert_eq!(a1[1], a2[1], "the oracle");
    let claim = |d: &serde_json::Value| {
        d["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"].clone()
    };
    assert_eq!(claim(stage1), docs[0]["metadata"]["name"]);
    assert_eq!(claim(assemble), docs[0]["metadata"]["name"]);

    let script = root().join("deploy/slurm/elastify.sbatch");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("--dependency=\"afterok:$stage1\""));
    assert!(text.contains("--stage1-shard \"auto/$SHARDS\""));
    let bare = Command::new("bash")
        .arg(&script)
        .arg("stage1")
        .env_remove("ORACLE")
        .output()
        .unwrap();
    assert!(!bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stderr).contains("set ORACLE"));
}
