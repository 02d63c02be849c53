//! The error type of the `onnx` crate: every variant names the file, tensor or
//! node it is about, so a one-line message tells the user what to fix.

use std::path::PathBuf;

/// Errors raised while reading, analysing, cutting or running ONNX models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes of a file (or buffer) are not a usable ONNX model.
    #[error("{origin}: {problem}")]
    BadModel { origin: String, problem: String },
    /// The graph is well-formed protobuf but its structure does not allow the
    /// requested analysis (no cut between two tensors, unknown tensor, ...).
    #[error("{0}")]
    Graph(String),
    /// A shrink branch cannot prune a block's hidden channels through a node.
    #[error(transparent)]
    CannotPrune(Box<CannotPrune>),
    /// tract refused to type, optimise or run a graph.
    #[error("tract: {context}: {message}")]
    Tract { context: String, message: String },
    /// A data file (IDX, NPY) is malformed or does not fit its use.
    #[error("{origin}: {problem}")]
    BadData { origin: String, problem: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn bad_model(origin: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::BadModel {
            origin: origin.into(),
            problem: problem.into(),
        }
    }
    pub(crate) fn bad_data(origin: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::BadData {
            origin: origin.into(),
            problem: problem.into(),
        }
    }
    pub(crate) fn tract(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        // `{:#}` on anyhow-style errors prints the whole context chain on one line.
        Error::Tract {
            context: context.into(),
            message: format!("{err:#}"),
        }
    }
}

/// Why a shrink branch cannot prune a block's hidden channels.
#[derive(Debug, thiserror::Error)]
#[error(
    "shrink {branch}: cannot prune the output of `{conv}` through `{node}` ({op}): {reason}; \
     list block {block} in `branches.skip_blocks` of the elastify spec to build no new branch over it"
)]
pub struct CannotPrune {
    /// The shrink branch id, e.g. `s3@50`.
    pub branch: String,
    /// The oracle block it copies.
    pub block: usize,
    /// The oracle conv whose output channels were being pruned.
    pub conv: String,
    /// The oracle node the pruning cannot pass.
    pub node: String,
    /// That node's op type.
    pub op: String,
    /// Why not.
    pub reason: String,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
