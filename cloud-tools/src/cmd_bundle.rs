//! Bundle commands: `keygen`, `sign`, `verify` and `inspect`.
//!
//! Signing uses the `minisign` crate and writes standard minisign signatures:
//! `minisign -Vm manifest.yaml -p KEY.pub` accepts ours, and bundles signed
//! with `minisign -S` verify here.

use std::io::Write;
use std::path::{Path, PathBuf};

use adaptivenet_onnx::bundle::{self, shape_string, Bundle, Manifest, SignatureStatus};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use crate::table::Table;

/// Environment variable holding the password of an encrypted secret key.
pub const PASSWORD_ENV: &str = "ADAPTIVENET_KEY_PASSWORD";

#[derive(Args)]
pub struct KeygenArgs {
    /// Folder for NAME.key (secret) and NAME.pub (public); created if missing.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Base name of the key files.
    #[arg(long, default_value = "adaptivenet")]
    pub name: String,
}

#[derive(Args)]
pub struct SignArgs {
    /// The bundle to sign.
    pub bundle: PathBuf,
    /// Minisign secret key (unencrypted, or encrypted with the password in
    /// the ADAPTIVENET_KEY_PASSWORD environment variable).
    #[arg(long)]
    pub key: PathBuf,
    /// Write the signed bundle here instead of replacing BUNDLE (`--out`
    /// is accepted too).
    #[arg(short, long = "output", alias = "out")]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The bundle to verify.
    pub bundle: PathBuf,
    /// Trusted minisign public key; repeat to trust several.
    #[arg(long = "pubkey", required = true)]
    pub pubkeys: Vec<PathBuf>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The bundle to inspect.
    pub bundle: PathBuf,
    /// Print the manifest as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Measure top-1 of the oracle path, every single-branch subnet and the
    /// fastest subnet on labelled data (idx:/npy:/folder: source).
    #[arg(long)]
    pub eval: Option<String>,
}

/// A secret key and its public key, as the minisign crate holds them.
pub struct SigningKey {
    pub secret: minisign::SecretKey,
    pub public: minisign::PublicKey,
}

/// The key id as minisign prints it (16 upper-case hex digits).
fn key_id(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// Read a minisign secret key file; errors name the file and the problem.
pub fn read_secret_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the secret key", path.display()))?;
    let bad = |what: String| anyhow!("{}: {what}", path.display());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 2 || !lines[0].starts_with("untrusted comment:") {
        return Err(bad(
            "not a minisign secret key file (expected an `untrusted comment:` line and a base64 line)".into()
        ));
    }
    if lines[1].trim().len() < 100 {
        return Err(bad("this is a minisign public key, not a secret key".into()));
    }
    let boxed = || minisign::SecretKeyBox::from_string(&text);
    let secret =
        match minisign::SecretKey::from_unencrypted_box(boxed().map_err(|e| bad(e.to_string()))?) {
            Ok(sk) => sk,
            Err(e) if e.to_string().contains("encrypted") => {
                let password = std::env::var(PASSWORD_ENV).map_err(|_| {
                    bad(format!(
                        "the secret key is encrypted; put its password in {PASSWORD_ENV}"
                    ))
                })?;
                minisign::SecretKey::from_box(
                    boxed().map_err(|e| bad(e.to_string()))?,
                    Some(password),
                )
                .map_err(|e| bad(format!("cannot decrypt the secret key: {e}")))?
            }
            Err(e) if e.to_string().contains("Corrupted key") => {
                // `minisign -G -W` (0.11) writes unencrypted keys with a zero
                // checksum; accept those, and check the key by signing below.
                let raw = base64_decode(lines[1].trim())
                    .ok_or_else(|| bad("not a valid minisign secret key: bad base64".into()))?;
                let zero_chk = raw.len() == 158
                    && raw[4..6] == *b"B2"
                    && raw[2..4] == [0, 0]
                    && raw[126..].iter().all(|&b| b == 0);
                if !zero_chk {
                    return Err(bad(format!("not a valid minisign secret key: {e}")));
                }
                minisign::SecretKey::from_bytes(&raw)
                    .map_err(|e| bad(format!("not a valid minisign secret key: {e}")))?
            }
            Err(e) => return Err(bad(format!("not a valid minisign secret key: {e}"))),
        };
    let public = minisign::PublicKey::from_secret_key(&secret)
        .map_err(|e| bad(format!("not a valid minisign secret key: {e}")))?;
    // The secret and public halves must agree: sign a probe and verify it.
    minisign::sign(
        Some(&public),
        &secret,
        std::io::Cursor::new(b"probe"),
        Some("probe"),
        None,
    )
    .map_err(|e| bad(format!("the secret key is corrupt: {e}")))?;
    Ok(SigningKey { secret, public })
}

/// Standard base64 (with padding), as minisign writes it.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Some(out)
}

/// Sign `manifest.yaml` bytes: returns the text of `manifest.sig`, a standard
/// minisign (prehashed ed25519) signature.
pub fn sign_manifest(manifest_bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let model = Manifest::from_yaml(&String::from_utf8_lossy(manifest_bytes))
        .map(|m| format!("\tmodel:{} version:{}", m.model.name, m.model.version))
        .unwrap_or_default();
    let trusted = format!("timestamp:{now}\tfile:manifest.yaml{model}");
    let sig = minisign::sign(
        Some(&key.public),
        &key.secret,
        std::io::Cursor::new(manifest_bytes),
        Some(&trusted),
        Some("signature from adaptivenet secret key"),
    )
    .map_err(|e| anyhow!("signing failed: {e}"))?;
    Ok(sig.into_string().into_bytes())
}

pub fn keygen(args: &KeygenArgs) -> Result<()> {
    if args.name.is_empty() || args.name.contains('/') {
        bail!(
            "--name `{}`: expected a plain file name without `/`",
            args.name
        );
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("{}: cannot create the folder", args.out_dir.display()))?;
    let sk_path = args.out_dir.join(format!("{}.key", args.name));
    let pk_path = args.out_dir.join(format!("{}.pub", args.name));
    for p in [&sk_path, &pk_path] {
        if p.exists() {
            bail!(
                "{}: already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| anyhow!("key generation failed: {e}"))?;
    let id = key_id(pair.pk.keynum());
    let sk_text = pair
        .sk
        .to_box(Some(&format!("adaptivenet secret key {id} (unencrypted)")))
        .map_err(|e| anyhow!("cannot encode the secret key: {e}"))?
        .into_string();
    let pk_text = pair
        .pk
        .to_box()
        .map_err(|e| anyhow!("cannot encode the public key: {e}"))?
        .into_string();
    write_new(&sk_path, sk_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pk_path, pk_text.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&sk_path);
        return Err(e);
    }
    println!(
        "secret key: {} (unencrypted: keep it off devices and out of version control)",
        sk_path.display()
    );
    println!("public key: {}", pk_path.display());
    println!("key id:     {id}");
    Ok(())
}

/// Create a file that must not exist yet, with `mode` on Unix.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    result.with_context(|| format!("{}: cannot write", path.display()))
}

pub fn sign(args: &SignArgs) -> Result<()> {
    let key = read_secret_key(&args.key)?;
    // Checksums, manifest and model are checked before anything is signed; an
    // existing signature is replaced whoever made it.
    let bundle = Bundle::open(&args.bundle, &[], true)?;
    let sig = sign_manifest(&bundle.manifest_bytes, &key)?;
    let out = args.out.as_deref().unwrap_or(&args.bundle);
    bundle.write_with_signature(out, &sig)?;
    println!(
        "signed {} ({} version {}) with key {} -> {}",
        args.bundle.display(),
        bundle.manifest.model.name,
        bundle.manifest.model.version,
        key_id(key.public.keynum()),
        out.display()
    );
    Ok(())
}

pub fn verify(args: &VerifyArgs) -> Result<()> {
    let keys = args
        .pubkeys
        .iter()
        .map(|p| bundle::read_public_key(p).map_err(|e| anyhow!(e)))
        .collect::<Result<Vec<_>>>()?;
    let b = Bundle::open(&args.bundle, &keys, false)?;
    let by = match &b.signature_status {
        SignatureStatus::Verified { key_index, .. } => {
            args.pubkeys[*key_index].display().to_string()
        }
        other => bail!(
            "{}: internal error: signature status {other:?} after a signed open",
            args.bundle.display()
        ),
    };
    println!(
        "OK {}: {} version {} sha256 {} (signed by {})",
        args.bundle.display(),
        b.manifest.model.name,
        b.manifest.model.version,
        b.sha256,
        by
    );
    Ok(())
}

fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 10 << 20 => format!("{} MiB", n >> 20),
        n if n >= 10 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn list(v: &[f32]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let b = Bundle::open(&args.bundle, &[], true)?;
    let m = &b.manifest;
    if let Some(source) = &args.eval {
        return crate::cmd_subnet::eval_table(&b, source);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    let signature = match &b.signature_status {
        SignatureStatus::Unsigned => "none (unsigned bundle)".to_string(),
        _ => "present, not verified here (use `adaptivenet verify --pubkey KEY`)".to_string(),
    };
    let inp = &m.input;
    println!(
        "bundle:      {} ({}, sha256 {})",
        b.path.display(),
        human_bytes(
            std::fs::metadata(&b.path)
                .map(|x| x.len() as usize)
                .unwrap_or(0)
        ),
        b.sha256
    );
    println!("model:       {} version {}", m.model.name, m.model.version);
    println!("compatible:  {}", m.compatible);
    println!("format:      {}", m.format_version);
    if let Some(c) = &m.created_by {
        println!(
            "created by:  {} {}{}",
            c.tool,
            c.version,
            c.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    println!("signature:   {signature}");
    println!(
        "input:       {} {} {} {}",
        inp.name,
        shape_string(&inp.shape),
        inp.dtype,
        inp.layout
    );
    println!(
        "preprocess:  mean {} std {}",
        list(&inp.preprocess.mean),
        list(&inp.preprocess.std)
    );
    if !inp.labels.is_empty() {
        println!(
            "labels:      {} ({})",
            inp.labels.len(),
            inp.labels.join(", ")
        );
    }
    println!("output:      {}", m.output.name);
    let files: Vec<String> = b
        .files
        .iter()
        .map(|(k, v)| format!("{k} ({})", human_bytes(v.len())))
        .collect();
    println!("files:       {}", files.join(", "));
    println!();
    println!("cuts: {}", m.cuts.len());
    let mut cuts = Table::new(&["index", "tensor", "shape"]);
    for c in &m.cuts {
        cuts.row(vec![
            format!("c{}", c.index),
            c.tensor.clone(),
            shape_string(&c.shape),
        ]);
    }
    print!("{}", cuts.render());
    println!();
    let count = |k: bundle::BranchKind| m.branches.iter().filter(|b| b.kind == k).count();
    println!(
        "branches: {} ({} original, {} merge, {} shrink); subnets: {}",
        m.branches.len(),
        count(bundle::BranchKind::Original),
        count(bundle::BranchKind::Merge),
        count(bundle::BranchKind::Shrink),
        m.count_subnets()
    );
    let mut table = Table::new(&[
        "id",
        "from",
        "to",
        "kind",
        "MACs",
        "params",
        "distill loss",
        "tensor",
    ]);
    for br in &m.branches {
        table.row(vec![
            br.id.to_string(),
            format!("c{}", br.from),
            format!("c{}", br.to),
            br.kind.to_string(),
            br.macs.to_string(),
            br.param_count.to_string(),
            br.distill_loss
                .map(|l| format!("{l:.6}"))
                .unwrap_or_else(|| "-".into()),
            br.tensor.clone(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}
