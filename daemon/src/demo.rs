//! `adaptived --demo`: serve the shipped demo bundle (the trained
//! Fashion-MNIST ResNet supernet, signed with the demo key) with the
//! committed 1k-image validation subset, in a temporary state folder, and
//! print a ready-to-paste request. The demo files are found in the folder
//! named by `ADAPTIVENET_DEMO_ROOT`, else the current folder (a source
//! checkout), else `/usr/share/adaptivenet` (the packaged demo).

use std::path::{Path, PathBuf};

use adaptivenet_onnx::bundle::Manifest;

use crate::config::{Config, Listen, ValidationData};

/// The demo bundle, relative to the demo root.
pub const DEMO_BUNDLE: &str = "demo/fmnist-resnet.bundle";
/// The demo public key (demos and tests only).
pub const DEMO_PUBKEY: &str = "tests/fixtures/keys/demo.pub";
/// The validation subset the demo searches on.
pub const VALIDATION_IMAGES: &str = "tests/fixtures/data/fmnist-test-1k-images-idx3-ubyte.gz";
pub const VALIDATION_LABELS: &str = "tests/fixtures/data/fmnist-test-1k-labels-idx1-ubyte.gz";
/// Where a package installs the demo files.
pub const PACKAGED_ROOT: &str = "/usr/share/adaptivenet";

/// Why the demo cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("no demo files: {DEMO_BUNDLE} is not under $ADAPTIVENET_DEMO_ROOT, the current folder or {PACKAGED_ROOT}; run from the repository root")]
    NotFound,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Data {
        path: PathBuf,
        #[source]
        source: adaptivenet_onnx::Error,
    },
}

/// The folder holding the demo files.
pub fn demo_root() -> Result<PathBuf, DemoError> {
    let candidates = std::env::var_os("ADAPTIVENET_DEMO_ROOT")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::current_dir().ok())
        .chain([PathBuf::from(PACKAGED_ROOT)]);
    for root in candidates {
        if root.join(DEMO_BUNDLE).is_file() {
            return Ok(root);
        }
    }
    Err(DemoError::NotFound)
}

/// The demo setup: a config and the bundle file to install at start.
pub struct Demo {
    pub config: Config,
    pub bundle: PathBuf,
    pub workdir: PathBuf,
}

/// Prepare the demo: folders under the temp dir, the bundle, the config.
pub fn prepare(listen: Option<Listen>) -> Result<Demo, DemoError> {
    let root = demo_root()?;
    let workdir = std::env::temp_dir().join(format!("adaptived-demo-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).map_err(|source| DemoError::Io {
        path: workdir.clone(),
        source,
    })?;
    let bundle = root.join(DEMO_BUNDLE);
    log::info!("demo: serving {}", bundle.display());
    let config = Config {
        bundle_dir: workdir.join("bundles"),
        state_dir: workdir.join("state"),
        listen: listen.unwrap_or_default(),
        trusted_keys: vec![root.join(DEMO_PUBKEY)],
        validation_data: Some(ValidationData {
            images: root.join(VALIDATION_IMAGES),
            labels: Some(root.join(VALIDATION_LABELS)),
            limit: 500,
        }),
        ..Config::default()
    };
    Ok(Demo {
        config,
        bundle,
        workdir,
    })
}

/// A request body with the first validation image as UINT8, for the curl
/// example, written next to the demo state; returns its path and the
/// image's class name (from the bundle's labels).
pub fn write_example_request(
    demo: &Demo,
    manifest: &Manifest,
) -> Result<(PathBuf, String), DemoError> {
    let Some(v) = demo.config.validation_data.as_ref() else {
        return Err(DemoError::NotFound);
    };
    let data_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Data { path, source }
    };
    let img = adaptivenet_onnx::idx::read_idx(&v.images).map_err(data_err(&v.images))?;
    let (h, w) = match img.dims.as_slice() {
        [n, h, w] if *n > 0 => (*h, *w),
        _ => {
            return Err(DemoError::Data {
                path: v.images.clone(),
                source: adaptivenet_onnx::Error::Graph("expected [N, H, W] images".into()),
            })
        }
    };
    let label = v
        .labels
        .as_ref()
        .and_then(|l| adaptivenet_onnx::idx::read_idx(l).ok())
        .and_then(|l| l.data.first().copied())
        .map(|c| {
            manifest
                .input
                .labels
                .get(c as usize)
                .cloned()
                .unwrap_or_else(|| c.to_string())
        })
        .unwrap_or_else(|| "?".into());
    let body = serde_json::json!({
        "id": "demo-1",
        "inputs": [{
            "name": manifest.input.name,
            "shape": [1, 1, h, w],
            "datatype": "UINT8",
            "data": img.item(0),
        }]
    });
    let path = demo.workdir.join("request.json");
    std::fs::write(&path, body.to_string()).map_err(|source| DemoError::Io {
        path: path.clone(),
        source,
    })?;
    Ok((path, label))
}

/// Log what serves and print the curl examples.
pub fn print_help(d: &Demo, url: &str, active: &crate::shared::Active) {
    let name = active.name();
    log::info!(
        "demo: serving `{name}` v{}, subnet `{}`",
        active.version(),
        active.engine.subnet
    );
    match write_example_request(d, &active.bundle.manifest) {
        Ok((req, label)) => {
            println!();
            println!("adaptived demo is up at {url}. Try (the image is a `{label}`):");
            println!();
            println!("  curl -s -X POST {url}/v2/models/{name}/infer -H 'Content-Type: application/json' -d @{}", req.display());
            println!("  curl -s {url}/v2/models/{name}/adaptation");
            println!("  curl -s {url}/metrics");
            println!();
        }
        Err(e) => log::warn!("demo: cannot write the example request: {e}"),
    }
}
