//! The fuzzing entry points, one per target: each takes arbitrary bytes and
//! must return without panicking (errors are the expected outcome). The
//! cargo-fuzz targets in `fuzz/fuzz_targets/` call these, and
//! `tests/tests/fuzz_corpus.rs` feeds them every committed corpus file so
//! the seeds run in ordinary `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use adaptivenet_daemon::config::Config;
use adaptivenet_daemon::server::codec::{decode_request, decompress, Coding};
use adaptivenet_onnx::bundle::{read_public_key, Bundle, PublicKey};
use adaptivenet_onnx::model_io::decode_model;
use adaptivenet_onnx::Oracle;

/// For the cargo-fuzz targets' `init`: a panic the library catches itself
/// (tract's, inside `adaptivenet_onnx::guard`, which the daemon turns into
/// an error naming the file) is not a crash, so libFuzzer's hook that aborts
/// on every panic is replaced by a silent one. A panic that escapes an entry
/// point still aborts (libfuzzer-sys catches it and aborts) and is reported
/// with its input; with that input as a seed, `cargo test --test
/// fuzz_corpus` prints its message.
#[allow(
    dead_code,
    reason = "called by the fuzz targets; tests/tests/fuzz_corpus.rs includes this file and keeps the default hook"
)]
pub fn count_only_escaped_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

/// A fuzz entry point: arbitrary bytes in, no panic out.
pub type Entry = fn(&[u8]);

/// The targets by name (the corpus folder of each is `fuzz/corpus/NAME`).
pub const TARGETS: &[(&str, Entry)] = &[
    ("bundle", bundle),
    ("config", config),
    ("infer_request", infer_request),
    ("onnx_blocks", onnx_blocks),
];

/// The repository root (this file is included by crates one level below it).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo_key() -> &'static [PublicKey] {
    static KEY: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = repo().join("tests/fixtures/keys/demo.pub");
        match read_public_key(&path) {
            Ok(k) => vec![k],
            Err(e) => panic!("the demo public key {}: {e}", path.display()),
        }
    })
}

/// The bundle reader (tar, manifest, signature, checksums, supernet): as a
/// device reads it (demo key trusted, signature required), and as a
/// development setup does (no key, unsigned allowed), so a mutated manifest
/// still reaches the manifest and file checks.
pub fn bundle(data: &[u8]) {
    let path = Path::new("fuzz.bundle");
    let _ = Bundle::from_bytes(path, data, demo_key(), false);
    let _ = Bundle::from_bytes(path, data, &[], true);
}

/// The config parser; a config that parses prints as YAML that parses back
/// to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    if let Ok(c) = Config::from_yaml(text, path) {
        let printed = c.to_yaml();
        match Config::from_yaml(&printed, path) {
            Ok(back) => assert_eq!(back, c, "the printed config differs:\n{printed}"),
            Err(e) => panic!("the printed config does not parse: {e}\n{printed}"),
        }
    }
}

/// ONNX decoding, validation, block detection and shape inference at batch
/// 1 (`Oracle::from_model` runs `detect_blocks`).
pub fn onnx_blocks(data: &[u8]) {
    if let Ok(model) = decode_model(data, "fuzz.onnx") {
        let _ = Oracle::from_model(model, "fuzz.onnx", None);
    }
}

/// The KServe v2 infer request decoder as the server runs it on a worker:
/// the content coding undone (bounded), then the JSON request and the
/// binary tensor data extension split and checked. The input's first byte
/// picks the coding (`% 3`: identity, gzip, deflate) and whether the body
/// has a binary section (bit 2), the next two bytes are the
/// `Inference-Header-Content-Length` (little-endian), the rest is the body.
pub fn infer_request(data: &[u8]) {
    let [mode, lo, hi, body @ ..] = data else {
        return;
    };
    let coding = match mode % 3 {
        0 => Coding::Identity,
        1 => Coding::Gzip,
        _ => Coding::Deflate,
    };
    let header_len = (mode & 4 != 0).then(|| usize::from(u16::from_le_bytes([*lo, *hi])));
    if let Ok(plain) = decompress(coding, body) {
        let _ = decode_request(&plain, header_len);
    }
}
