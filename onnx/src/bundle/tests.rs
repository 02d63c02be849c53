//! Bundle tests on real files: a real ONNX oracle, a manifest measured from
//! it, signed with the committed demo key, written to and read from disk.

use std::path::{Path, PathBuf};

use super::*;
use crate::oracle::Oracle;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The FMNIST ResNet oracle, or (until it is exported) a third-party ONNX model.
pub(crate) fn oracle_path() -> PathBuf {
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

fn demo_key() -> minisign::SecretKey {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/keys/demo.key")).expect("demo.key");
    minisign::SecretKey::from_unencrypted_box(
        minisign::SecretKeyBox::from_string(&text).expect("box"),
    )
    .expect("demo.key is an unencrypted minisign key")
}

fn demo_pub() -> PublicKey {
    read_public_key(&repo().join("tests/fixtures/keys/demo.pub")).expect("demo.pub")
}

fn sign_with(sk: &minisign::SecretKey, data: &[u8]) -> std::result::Result<Vec<u8>, SignError> {
    minisign::sign(
        None,
        sk,
        std::io::Cursor::new(data),
        Some("file:manifest.yaml"),
        None,
    )
    .map(|b| b.into_string().into_bytes())
    .map_err(|e| e.to_string().into())
}

fn demo_sign(data: &[u8]) -> std::result::Result<Vec<u8>, SignError> {
    sign_with(&demo_key(), data)
}

/// A fresh folder under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "adaptivenet-bundle-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn description() -> ModelDescription {
    ModelDescription {
        name: "fmnist-resnet".into(),
        version: 7,
        compatible: "generic-cpu".into(),
        preprocess: Preprocess {
            mean: vec![0.2860],
            std: vec![0.3530],
        },
        labels: [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    }
}

/// Add two stand-in branches to a real oracle, as the supernet format puts
/// them: extra nodes that read cut c_0 and write a tensor named after the
/// branch, exposed as extra graph outputs (Identity keeps the shapes right:
/// c0, c1 and c2 of the fixture have the same shape). Real branches come
/// from `elastify`; these exercise the format.
fn with_stand_in_branches(onnx: &[u8], m: &mut Manifest) -> Vec<u8> {
    use tract_onnx::pb::{NodeProto, ValueInfoProto};
    let mut model = crate::model_io::decode_model(onnx, "fixture").unwrap();
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
    crate::model_io::encode_model(&model)
}

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    onnx: Vec<u8>,
    manifest: Manifest,
}

fn fixture(tag: &str, sign: bool) -> Fixture {
    let src = oracle_path();
    let onnx = std::fs::read(&src).expect("oracle fixture");
    let oracle = Oracle::load(&src, None).expect("oracle loads");
    let mut manifest = oracle_manifest(&oracle, &description()).expect("manifest");
    manifest.created_by = Some(CreatedBy {
        tool: "adaptivenet-onnx tests".into(),
        version: "0.1.0".into(),
        note: None,
    });
    let onnx = with_stand_in_branches(&onnx, &mut manifest);
    let dir = TempDir::new(tag);
    let path = dir.0.join("fmnist.bundle");
    let mut w = BundleWriter::new(manifest);
    w.add_file(SUPERNET_FILE, onnx.clone()).unwrap();
    w.add_file("calibration/sample.bin", vec![1, 2, 3, 4])
        .unwrap();
    let sign_fn: Signer = &demo_sign;
    let manifest = w
        .write(&path, if sign { Some(sign_fn) } else { None })
        .expect("write bundle");
    Fixture {
        _dir: dir,
        path,
        onnx,
        manifest,
    }
}

/// Rewrite the tar at `path` with `edit` applied to its entries (bypassing
/// the writer's checks, like an attacker or a broken copy would).
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) {
    let bytes = std::fs::read(path).unwrap();
    let entries = archive::read_entries(&bytes).unwrap();
    let mut order: Vec<(String, Vec<u8>)> = entries.into_iter().collect();
    edit(&mut order);
    let out = archive::tar_bytes(order.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
    std::fs::write(path, out).unwrap();
}

fn open_err(path: &Path, keys: &[PublicKey], allow_unsigned: bool) -> String {
    match Bundle::open(path, keys, allow_unsigned) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.starts_with(&path.display().to_string()),
                "error must name the bundle: {s}"
            );
            assert!(!s.contains('\n'), "one line: {s}");
            s
        }
    }
}

#[test]
fn signed_bundle_opens() {
    let f = fixture("ok", true);
    let b = Bundle::open(&f.path, &[demo_pub()], false).expect("opens");
    assert_eq!(b.manifest, f.manifest);
    assert_eq!(b.supernet_bytes(), &f.onnx[..]);
    assert!(matches!(
        b.signature_status,
        SignatureStatus::Verified { key_index: 0, .. }
    ));
    assert_eq!(b.files.len(), 2);
    assert_eq!(b.manifest.files[SUPERNET_FILE], sha256_hex(&f.onnx));
    assert_eq!(b.sha256, sha256_hex(&std::fs::read(&f.path).unwrap()));
    assert!(b.manifest.num_blocks() >= 2);
    b.manifest
        .validate_subnet(&b.manifest.oracle_subnet())
        .unwrap();
    let n = b.manifest.num_blocks();
    let tail: Vec<String> = (2..n).map(|i| format!("b{i}")).collect();
    b.manifest
        .parse_subnet(&format!("m0x2 {}", tail.join(" ")))
        .unwrap();
    b.manifest
        .parse_subnet(&format!("s0@50 b1 {}", tail.join(" ")))
        .unwrap();
    assert!(b
        .manifest
        .parse_subnet(&format!("m0x2 b1 {}", tail.join(" ")))
        .is_err());
    assert_eq!(b.manifest.count_subnets(), 3);
    println!("{}", String::from_utf8_lossy(&b.manifest_bytes));
    // Nothing but the bundle is left in the folder (no temporary files).
    let names: Vec<_> = std::fs::read_dir(f.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn flipped_byte_in_supernet_is_a_checksum_error() {
    let f = fixture("flip", true);
    rewrite(&f.path, |e| {
        let (_, data) = e.iter_mut().find(|(k, _)| k == SUPERNET_FILE).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
    });
    let err = open_err(&f.path, &[demo_pub()], false);
    assert!(
        err.contains("checksum mismatch for `supernet.onnx`"),
        "{err}"
    );
}

#[test]
fn truncated_tar_is_a_clear_error() {
    let f = fixture("trunc", true);
    let bytes = std::fs::read(&f.path).unwrap();
    for keep in [
        bytes.len() / 2,
        bytes.len() - 1,
        bytes.len() - 1024,
        700,
        10,
    ] {
        std::fs::write(&f.path, &bytes[..keep]).unwrap();
        let err = open_err(&f.path, &[demo_pub()], false);
        assert!(err.contains("truncated"), "keep {keep}: {err}");
    }
}

#[test]
fn wrong_public_key_is_a_signature_error() {
    let f = fixture("wrongkey", true);
    let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let other_pub = signature::parse_public_key(&other.pk.to_box().unwrap().into_string()).unwrap();
    let err = open_err(&f.path, std::slice::from_ref(&other_pub), false);
    assert!(
        err.contains("manifest.sig was made with a key that is not trusted"),
        "{err}"
    );
    // With the right key among several, it opens and says which one.
    let b = Bundle::open(&f.path, &[other_pub, demo_pub()], false).unwrap();
    assert!(matches!(
        b.signature_status,
        SignatureStatus::Verified { key_index: 1, .. }
    ));
}

#[test]
fn tampered_manifest_fails_the_signature() {
    let f = fixture("tamper", true);
    rewrite(&f.path, |e| {
        let (_, data) = e.iter_mut().find(|(k, _)| k == MANIFEST_FILE).unwrap();
        let text = String::from_utf8(data.clone())
            .unwrap()
            .replace("version: 7", "version: 8");
        *data = text.into_bytes();
    });
    let err = open_err(&f.path, &[demo_pub()], false);
    assert!(
        err.contains("manifest.sig does not match manifest.yaml"),
        "{err}"
    );
    // A garbage signature file is named as such.
    rewrite(&f.path, |e| {
        let (_, data) = e.iter_mut().find(|(k, _)| k == SIGNATURE_FILE).unwrap();
        *data = b"hello".to_vec();
    });
    let err = open_err(&f.path, &[demo_pub()], false);
    assert!(
        err.contains("manifest.sig is not a minisign signature"),
        "{err}"
    );
}

#[test]
fn unsigned_bundle_needs_allow_unsigned() {
    let f = fixture("unsigned", false);
    let err = open_err(&f.path, &[demo_pub()], false);
    assert!(err.contains("unsigned"), "{err}");
    let b = Bundle::open(&f.path, &[demo_pub()], true).unwrap();
    assert_eq!(b.signature_status, SignatureStatus::Unsigned);
    // Re-signing keeps the manifest and files and makes it acceptable.
    let signed = f.path.with_extension("signed");
    b.write_with_signature(&signed, &demo_sign(&b.manifest_bytes).unwrap())
        .unwrap();
    let s = Bundle::open(&signed, &[demo_pub()], false).unwrap();
    assert_eq!(s.manifest_bytes, b.manifest_bytes);
    assert_eq!(s.files, b.files);
    // A signed bundle with no trusted keys: refused unless unsigned is allowed.
    assert!(open_err(&signed, &[], false).contains("no trusted public key"));
    assert_eq!(
        Bundle::open(&signed, &[], true).unwrap().signature_status,
        SignatureStatus::NotChecked
    );
}

#[test]
fn unknown_manifest_key_is_named() {
    let f = fixture("unknown", true);
    let sk = demo_key();
    rewrite(&f.path, |e| {
        let text = {
            let (_, data) = e.iter_mut().find(|(k, _)| k == MANIFEST_FILE).unwrap();
            let t = String::from_utf8(data.clone()).unwrap().replacen(
                "compatible:",
                "compatibel: typo\ncompatible:",
                1,
            );
            *data = t.clone().into_bytes();
            t
        };
        // Re-sign, so the only problem is the key.
        let (_, sig) = e.iter_mut().find(|(k, _)| k == SIGNATURE_FILE).unwrap();
        *sig = sign_with(&sk, text.as_bytes()).unwrap();
    });
    let err = open_err(&f.path, &[demo_pub()], false);
    assert!(
        err.contains("manifest.yaml: unknown field `compatibel`"),
        "{err}"
    );
    assert!(err.contains("line "), "{err}");
}

#[test]
fn missing_and_unlisted_files_are_errors() {
    let f = fixture("files", true);
    let orig = std::fs::read(&f.path).unwrap();
    rewrite(&f.path, |e| {
        e.retain(|(k, _)| !k.starts_with("calibration/"))
    });
    assert!(open_err(&f.path, &[demo_pub()], false).contains("`calibration/sample.bin` is missing"));
    std::fs::write(&f.path, &orig).unwrap();
    rewrite(&f.path, |e| {
        e.push(("calibration/extra.bin".into(), vec![0]))
    });
    assert!(open_err(&f.path, &[demo_pub()], false)
        .contains("`calibration/extra.bin` is in the bundle but not listed"));
    std::fs::write(&f.path, &orig).unwrap();
    rewrite(&f.path, |e| e.retain(|(k, _)| k != MANIFEST_FILE));
    assert!(open_err(&f.path, &[demo_pub()], false).contains("`manifest.yaml` is missing"));
    let missing = f.path.with_extension("nope");
    assert!(open_err(&missing, &[demo_pub()], false).contains("No such file"));
}

#[test]
fn writer_refuses_bad_input_and_leaves_nothing() {
    let f = fixture("writer", true);
    let dir = f.path.parent().unwrap().to_path_buf();
    // A manifest naming a tensor the model lacks: nothing is written.
    let mut m = f.manifest.clone();
    m.output.name = "no_such_output".into();
    let out = dir.join("bad.bundle");
    let err = write_bundle(&out, &m, &[(SUPERNET_FILE, &f.onnx)], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("output.name `no_such_output`"), "{err}");
    // A branch whose tensor is not a graph output.
    let mut m = f.manifest.clone();
    m.branches.last_mut().unwrap().tensor = "branch/missing".into();
    let err = write_bundle(&out, &m, &[(SUPERNET_FILE, &f.onnx)], None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`branch/missing` is not an output of the graph"),
        "{err}"
    );
    // Garbage instead of a model.
    let err = write_bundle(&out, &f.manifest, &[(SUPERNET_FILE, b"not onnx")], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("supernet.onnx"), "{err}");
    // A signer that returns garbage.
    let bad_sign: Signer = &|_| Ok(b"junk".to_vec());
    assert!(write_bundle(
        &out,
        &f.manifest,
        &[(SUPERNET_FILE, &f.onnx)],
        Some(bad_sign)
    )
    .is_err());
    // Only files the format knows.
    assert!(BundleWriter::new(m.clone())
        .add_file("notes.txt", vec![])
        .is_err());
    assert!(BundleWriter::new(m.clone())
        .add_file("calibration/../x", vec![])
        .is_err());
    // Into a folder that does not exist: an error naming the path.
    let err = write_bundle(
        &dir.join("nope/x.bundle"),
        &f.manifest,
        &[(SUPERNET_FILE, &f.onnx)],
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope/x.bundle"));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "only the good bundle remains: {names:?}");
}

#[test]
fn public_key_files_are_checked() {
    let dir = TempDir::new("keys");
    let p = dir.0.join("k.pub");
    std::fs::write(&p, "hello\n").unwrap();
    let e = read_public_key(&p).unwrap_err().to_string();
    assert!(
        e.contains("k.pub") && e.contains("not a valid minisign public key"),
        "{e}"
    );
    let secret = std::fs::read_to_string(repo().join("tests/fixtures/keys/demo.key")).unwrap();
    std::fs::write(&p, secret).unwrap();
    assert!(read_public_key(&p)
        .unwrap_err()
        .to_string()
        .contains("secret key"));
    assert!(read_public_key(&dir.0.join("absent.pub"))
        .unwrap_err()
        .to_string()
        .contains("cannot read"));
}

#[test]
fn a_signed_manifest_whose_input_shape_is_not_the_graphs_is_refused() {
    let f = fixture("shape", true);
    rewrite(&f.path, |e| {
        let (_, data) = e.iter_mut().find(|(k, _)| k == MANIFEST_FILE).unwrap();
        let mut m = Manifest::from_yaml(std::str::from_utf8(data).unwrap()).unwrap();
        m.input.shape[2] = Dim::Fixed(1_000_000);
        m.input.shape[3] = Dim::Fixed(1_000_000);
        *data = m.to_yaml().unwrap().into_bytes();
        let sig = demo_sign(data).unwrap();
        let (_, s) = e.iter_mut().find(|(k, _)| k == SIGNATURE_FILE).unwrap();
        *s = sig;
    });
    let err = open_err(&f.path, &[demo_pub()], false);
    assert!(
        err.contains("input.shape [N, 1, 1000000, 1000000] differs from the graph's"),
        "{err}"
    );
}

#[test]
fn size_cap_and_signature_come_before_the_other_files() {
    let f = fixture("cap", true);
    let len = std::fs::metadata(&f.path).unwrap().len();
    let e = Bundle::open_limited(&f.path, &[demo_pub()], false, Some(len - 1)).unwrap_err();
    assert!(
        matches!(e.problem, BundleProblem::TooLarge { size, .. } if size == len),
        "{e}"
    );
    assert!(Bundle::open_limited(&f.path, &[demo_pub()], false, Some(len)).is_ok());
    // A bad signature is reported even when a file is also damaged: the
    // other files are not read before the signature verifies.
    rewrite(&f.path, |e| {
        let (_, data) = e.iter_mut().find(|(k, _)| k == SUPERNET_FILE).unwrap();
        data[100] ^= 0xff;
        let (_, m) = e.iter_mut().find(|(k, _)| k == MANIFEST_FILE).unwrap();
        m.extend_from_slice(b"\n");
    });
    let err = open_err(&f.path, &[demo_pub()], false);
    assert!(err.contains("manifest.sig does not match"), "{err}");
    // The whole-file sha256 is that of the bytes on disk.
    let g = fixture("sha", true);
    let b = Bundle::open(&g.path, &[demo_pub()], false).unwrap();
    assert_eq!(b.sha256, sha256_hex(&std::fs::read(&g.path).unwrap()));
    assert_eq!(b.sha256, sha256_of_file(&g.path).unwrap());
}
