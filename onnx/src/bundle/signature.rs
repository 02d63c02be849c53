//! Verifying the minisign (ed25519) signature of `manifest.yaml`. Devices
//! only verify; signing lives in the cloud tools.

use std::path::Path;

pub use minisign_verify::{PublicKey, Signature};

/// Why a public key file or text could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("{}: cannot read the public key: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not a usable minisign public key.
    #[error("{}{problem}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Format {
        path: Option<std::path::PathBuf>,
        problem: String,
    },
}

/// Read a minisign public key file (`NAME.pub`: an untrusted comment line and
/// a base64 line, as written by `minisign -G` or `adaptivenet keygen`).
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_public_key(&text).map_err(|e| match e {
        KeyError::Format { problem, .. } => KeyError::Format {
            path: Some(path.to_path_buf()),
            problem,
        },
        other => other,
    })
}

/// Parse the text of a minisign public key file, or a bare base64 key.
pub fn parse_public_key(text: &str) -> Result<PublicKey, KeyError> {
    let bad = |problem: String| KeyError::Format {
        path: None,
        problem,
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let key_line = match lines.as_slice() {
        [comment, key] if comment.starts_with("untrusted comment:") => *key,
        [key] => *key,
        _ => {
            return Err(bad(
                "not a minisign public key file (expected an `untrusted comment:` line and a base64 key line)".into()
            ))
        }
    };
    if key_line.len() > 100 {
        return Err(bad("this is a minisign secret key, not a public key".into()));
    }
    PublicKey::from_base64(key_line)
        .map_err(|e| bad(format!("not a valid minisign public key: {e}")))
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("manifest.sig is not a minisign signature: {0}")]
    Malformed(String),
    #[error("no trusted public key is configured to verify manifest.sig")]
    NoTrustedKeys,
    #[error("manifest.sig was made with a key that is not trusted (checked {0} key(s))")]
    UntrustedKey(usize),
    #[error(
        "manifest.sig does not match manifest.yaml: the manifest or the signature was altered"
    )]
    Invalid,
}

/// Verify `signature` (the text of `manifest.sig`) over `data` against the
/// trusted keys; returns the index of the key that verified it. Legacy
/// (non-prehashed) signatures are accepted too, as `minisign -V` does.
pub fn verify(
    data: &[u8],
    signature: &[u8],
    trusted: &[PublicKey],
) -> Result<usize, SignatureError> {
    let text = std::str::from_utf8(signature)
        .map_err(|_| SignatureError::Malformed("not UTF-8 text".into()))?;
    let sig = Signature::decode(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if trusted.is_empty() {
        return Err(SignatureError::NoTrustedKeys);
    }
    let mut any_key_matched = false;
    for (i, key) in trusted.iter().enumerate() {
        match key.verify(data, &sig, true) {
            Ok(()) => return Ok(i),
            Err(minisign_verify::Error::UnexpectedKeyId) => {}
            Err(_) => any_key_matched = true,
        }
    }
    if any_key_matched {
        Err(SignatureError::Invalid)
    } else {
        Err(SignatureError::UntrustedKey(trusted.len()))
    }
}

/// Check that bytes are a well-formed minisign signature (before writing them).
pub fn check_signature_format(signature: &[u8]) -> Result<(), SignatureError> {
    let text = std::str::from_utf8(signature)
        .map_err(|_| SignatureError::Malformed("not UTF-8 text".into()))?;
    Signature::decode(text)
        .map(|_| ())
        .map_err(|e| SignatureError::Malformed(e.to_string()))
}

/// The trusted comment of a signature, if it parses.
pub fn trusted_comment(signature: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(signature).ok()?;
    Signature::decode(text)
        .ok()
        .map(|s| s.trusted_comment().to_string())
}
