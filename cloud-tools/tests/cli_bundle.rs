//! The bundle commands, run as the real `adaptivenet` binary on a bundle made
//! from the real ONNX oracle fixture, and checked against the standard
//! `minisign` tool in both directions (the tool must be installed: CI does
//! `apt-get install -y minisign`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adaptivenet_onnx::bundle::{
    self, Branch, BranchId, BranchKind, Bundle, BundleWriter, CreatedBy, Manifest, SUPERNET_FILE,
};
use adaptivenet_onnx::Oracle;

const BIN: &str = env!("CARGO_BIN_EXE_adaptivenet");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn keys() -> PathBuf {
    repo().join("tests/fixtures/keys")
}

fn oracle_path() -> PathBuf {
    let fmnist = repo().join("tests/fixtures/oracle/fmnist_resnet.onnx");
    if fmnist.exists() {
        return fmnist;
    }
    let fallback = repo().join("tests/fixtures/thirdparty/light_squeezenet.onnx");
    eprintln!(
        "note: {} not found; using {}",
        fmnist.display(),
        fallback.display()
    );
    fallback
}

/// The standard minisign tool; a missing tool fails the test (CI installs it).
fn minisign_tool() -> PathBuf {
    if let Some(p) = std::env::var_os("MINISIGN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("minisign"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("the `minisign` tool is not on PATH; install it (`apt-get install -y minisign`) or set MINISIGN=/path/to/minisign")
        })
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "adaptivenet-cli-bundle-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(BIN)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("run adaptivenet")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A failed command: non-zero exit and exactly one line on stderr.
fn fails(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr: {stderr}"
    );
    stderr
}

fn tool(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(minisign_tool())
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run minisign")
}

/// Add two stand-in branches to a real oracle, as the supernet format puts
/// them: extra nodes that read cut c_0 and write a tensor named after the
/// branch, exposed as extra graph outputs (Identity keeps the shapes right:
/// c0, c1 and c2 of the fixture have the same shape). Real branches come
/// from `elastify`; these exercise the format.
fn with_stand_in_branches(onnx: &[u8], m: &mut Manifest) -> Vec<u8> {
    use adaptivenet_onnx::tract_onnx::pb::{NodeProto, ValueInfoProto};
    let mut model = adaptivenet_onnx::model_io::decode_model(onnx, "fixture").unwrap();
    let graph = model.graph.as_mut().unwrap();
    let c0 = m.cuts[0].tensor.clone();
    for (id, kind, params, loss) in [
        (
            "m0x2",
            BranchKind::Merge,
            serde_json::json!({"span": 2}),
            0.0123,
        ),
        (
            "s0@50",
            BranchKind::Shrink,
            serde_json::json!({"ratio": 0.5}),
            0.0042,
        ),
    ] {
        let tensor = format!("branch/{id}");
        graph.node.push(NodeProto {
            name: tensor.clone(),
            op_type: "Identity".into(),
            input: vec![c0.clone()],
            output: vec![tensor.clone()],
            ..Default::default()
        });
        graph.output.push(ValueInfoProto {
            name: tensor.clone(),
            ..Default::default()
        });
        let id: BranchId = id.parse().unwrap();
        m.branches.push(Branch {
            id,
            from: id.from_cut(),
            to: id.to_cut(),
            kind,
            params: params.as_object().unwrap().clone().into_iter().collect(),
            tensor,
            macs: m.branches[0].macs / 2,
            param_count: m.branches[0].param_count / 2,
            distill_loss: Some(loss),
        });
    }
    adaptivenet_onnx::model_io::encode_model(&model)
}

/// An unsigned bundle of the oracle fixture, with a one-file calibration set.
fn make_bundle(path: &Path) {
    let src = oracle_path();
    let oracle = Oracle::load(&src, None).expect("oracle");
    let desc = adaptivenet_testkit::bundles::fmnist_description("fmnist-resnet", 3);
    let mut m = bundle::oracle_manifest(&oracle, &desc).expect("manifest");
    m.created_by = Some(CreatedBy {
        tool: "cli_bundle test".into(),
        version: "0".into(),
        note: None,
    });
    let supernet = with_stand_in_branches(&std::fs::read(&src).unwrap(), &mut m);
    let mut w = BundleWriter::new(m);
    w.add_file(SUPERNET_FILE, supernet).unwrap();
    w.add_file("calibration/images.bin", vec![0u8; 784])
        .unwrap();
    w.write(path, None).expect("write bundle");
}

fn sha256_file(p: &Path) -> String {
    bundle::sha256_hex(&std::fs::read(p).unwrap())
}

#[test]
fn sign_verify_inspect_round_trip() {
    let dir = TempDir::new("roundtrip");
    let b = dir.join("model.bundle");
    make_bundle(&b);
    let (key, pubkey) = (keys().join("demo.key"), keys().join("demo.pub"));

    // Unsigned: verify refuses it.
    let e = fails(&run(&[&"verify", &b, &"--pubkey", &pubkey]));
    assert!(e.contains("unsigned"), "{e}");

    let out = ok(&run(&[&"sign", &b, &"--key", &key]));
    assert!(
        out.contains("signed") && out.contains("EFC8F5E42C86BE17"),
        "{out}"
    );
    let out = ok(&run(&[&"verify", &b, &"--pubkey", &pubkey]));
    println!("{out}");
    assert!(out.starts_with("OK "), "{out}");
    assert!(out.contains("fmnist-resnet version 3"), "{out}");
    assert!(out.contains(&sha256_file(&b)), "{out}");

    let out = ok(&run(&[&"inspect", &b]));
    println!("{out}");
    for want in [
        "model:       fmnist-resnet version 3",
        "compatible:  generic-cpu",
        "Ankle boot",
        "distill loss",
        "original",
        "b0 ",
        "c0 ",
        "m0x2",
        "s0@50",
        "0.012300",
        "subnets: 3",
    ] {
        assert!(out.contains(want), "inspect output lacks `{want}`:\n{out}");
    }
    let json = ok(&run(&[&"inspect", &b, &"--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["model"]["version"], 3);

    // -o writes a new file and leaves the input alone.
    let before = std::fs::read(&b).unwrap();
    let copy = dir.join("copy.bundle");
    ok(&run(&[&"sign", &b, &"--key", &key, &"-o", &copy]));
    assert_eq!(std::fs::read(&b).unwrap(), before);
    ok(&run(&[&"verify", &copy, &"--pubkey", &pubkey]));
    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["copy.bundle", "model.bundle"]);
}

#[test]
fn signatures_interoperate_with_the_minisign_tool() {
    let dir = TempDir::new("interop");
    let b = dir.join("model.bundle");
    make_bundle(&b);
    let (key, pubkey) = (keys().join("demo.key"), keys().join("demo.pub"));
    ok(&run(&[&"sign", &b, &"--key", &key]));

    // Ours -> the tool: `minisign -Vm manifest.yaml -p demo.pub` accepts it.
    let opened = Bundle::open(&b, &[bundle::read_public_key(&pubkey).unwrap()], false).unwrap();
    let manifest = dir.join("manifest.yaml");
    std::fs::write(&manifest, &opened.manifest_bytes).unwrap();
    std::fs::write(
        dir.join("manifest.yaml.minisig"),
        opened.signature.as_ref().unwrap(),
    )
    .unwrap();
    let out = tool(&[&"-Vm", &manifest, &"-p", &pubkey]);
    assert!(
        out.status.success(),
        "minisign -V rejected our signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("model:fmnist-resnet version:3"));

    // The tool -> ours: sign manifest.yaml with `minisign -S`, put it in.
    let tool_sig = dir.join("tool.sig");
    let out = tool(&[&"-S", &"-s", &key, &"-m", &manifest, &"-x", &tool_sig]);
    assert!(
        out.status.success(),
        "minisign -S failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resigned = dir.join("tool-signed.bundle");
    opened
        .write_with_signature(&resigned, &std::fs::read(&tool_sig).unwrap())
        .unwrap();
    let out = ok(&run(&[&"verify", &resigned, &"--pubkey", &pubkey]));
    assert!(out.starts_with("OK "), "{out}");

    // A key pair made by the tool (`-G -W`, unencrypted) signs with our command ...
    let (tkey, tpub) = (dir.join("tool.key"), dir.join("tool.pub"));
    let out = tool(&[&"-G", &"-W", &"-p", &tpub, &"-s", &tkey]);
    assert!(
        out.status.success(),
        "minisign -G failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b2 = dir.join("b2.bundle");
    ok(&run(&[&"sign", &b, &"--key", &tkey, &"-o", &b2]));
    ok(&run(&[&"verify", &b2, &"--pubkey", &tpub]));
    // ... and a key pair made by `adaptivenet keygen` signs with the tool.
    let kdir = dir.join("keys");
    ok(&run(&[&"keygen", &"--out-dir", &kdir, &"--name", &"ci"]));
    let out = tool(&[
        &"-S",
        &"-s",
        &kdir.join("ci.key"),
        &"-m",
        &manifest,
        &"-x",
        &tool_sig,
    ]);
    assert!(
        out.status.success(),
        "minisign -S with our key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tool(&[
        &"-V",
        &"-x",
        &tool_sig,
        &"-m",
        &manifest,
        &"-p",
        &kdir.join("ci.pub"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bundle signed by one key does not verify with another.
    let e = fails(&run(&[&"verify", &b2, &"--pubkey", &pubkey]));
    assert!(e.contains("not trusted"), "{e}");
    // Trusting both keys works.
    ok(&run(&[
        &"verify",
        &b2,
        &"--pubkey",
        &pubkey,
        &"--pubkey",
        &tpub,
    ]));
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = TempDir::new("keygen");
    let out = ok(&run(&[&"keygen", &"--out-dir", &dir.0, &"--name", &"k"]));
    assert!(out.contains("k.key") && out.contains("k.pub"), "{out}");
    let pk = std::fs::read(dir.join("k.pub")).unwrap();
    let e = fails(&run(&[&"keygen", &"--out-dir", &dir.0, &"--name", &"k"]));
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(dir.join("k.pub")).unwrap(), pk);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("k.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn bad_keys_and_tampered_bundles_fail_with_one_line() {
    let dir = TempDir::new("bad");
    let b = dir.join("model.bundle");
    make_bundle(&b);
    let (key, pubkey) = (keys().join("demo.key"), keys().join("demo.pub"));
    ok(&run(&[&"sign", &b, &"--key", &key]));

    // Key files: garbage, the wrong half, missing.
    let garbage = dir.join("garbage.key");
    std::fs::write(&garbage, "untrusted comment: x\nnot base64 at all\n").unwrap();
    let e = fails(&run(&[&"sign", &b, &"--key", &garbage]));
    assert!(e.contains("garbage.key") && e.contains("secret key"), "{e}");
    let e = fails(&run(&[&"sign", &b, &"--key", &pubkey]));
    assert!(e.contains("public key, not a secret key"), "{e}");
    let e = fails(&run(&[&"verify", &b, &"--pubkey", &key]));
    assert!(e.contains("demo.key") && e.contains("secret key"), "{e}");
    let e = fails(&run(&[&"verify", &b, &"--pubkey", &garbage]));
    assert!(
        e.contains("garbage.key") && e.contains("not a valid minisign public key"),
        "{e}"
    );
    let e = fails(&run(&[&"verify", &b, &"--pubkey", &dir.join("absent.pub")]));
    assert!(e.contains("absent.pub"), "{e}");
    // A corrupted secret key (one base64 character changed in the key bytes).
    let text = std::fs::read_to_string(&key).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut chars: Vec<char> = lines[1].chars().collect();
    chars[120] = if chars[120] == 'A' { 'B' } else { 'A' };
    lines[1] = chars.into_iter().collect();
    let corrupt = dir.join("corrupt.key");
    std::fs::write(&corrupt, lines.join("\n") + "\n").unwrap();
    let e = fails(&run(&[&"sign", &b, &"--key", &corrupt]));
    assert!(e.contains("corrupt.key"), "{e}");

    // A flipped byte in supernet.onnx.
    let bytes = std::fs::read(&b).unwrap();
    let opened = Bundle::open(&b, &[], true).unwrap();
    let onnx = opened.supernet_bytes();
    let probe = &onnx[onnx.len() / 2..onnx.len() / 2 + 64];
    let at = bytes.windows(64).position(|w| w == probe).unwrap();
    let mut tampered = bytes.clone();
    tampered[at] ^= 0x40;
    let t = dir.join("tampered.bundle");
    std::fs::write(&t, &tampered).unwrap();
    let e = fails(&run(&[&"verify", &t, &"--pubkey", &pubkey]));
    assert!(
        e.contains("tampered.bundle") && e.contains("checksum mismatch for `supernet.onnx`"),
        "{e}"
    );
    // Signing does not launder a tampered bundle.
    let e = fails(&run(&[&"sign", &t, &"--key", &key]));
    assert!(e.contains("checksum mismatch"), "{e}");
    // A tampered manifest.
    let mtext = String::from_utf8(opened.manifest_bytes.clone()).unwrap();
    let needle = "version: 3";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap();
    let mut tampered = bytes.clone();
    tampered[at + needle.len() - 1] = b'9';
    assert!(mtext.contains(needle));
    std::fs::write(&t, &tampered).unwrap();
    let e = fails(&run(&[&"verify", &t, &"--pubkey", &pubkey]));
    assert!(
        e.contains("manifest.sig does not match manifest.yaml"),
        "{e}"
    );
    // A half-copied bundle.
    std::fs::write(&t, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = fails(&run(&[&"verify", &t, &"--pubkey", &pubkey]));
    assert!(e.contains("truncated"), "{e}");
    let e = fails(&run(&[&"inspect", &t]));
    assert!(e.contains("truncated"), "{e}");
    // Not a bundle at all.
    let e = fails(&run(&[&"inspect", &pubkey]));
    assert!(e.contains("demo.pub"), "{e}");
}
