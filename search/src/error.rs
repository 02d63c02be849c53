//! The error type of the search: what failed, with the chain of causes kept
//! (the ONNX layer's errors name the file, tensor or node).

use std::path::PathBuf;

/// Why a search, a cache access or a report failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The model layer: reading, cutting, compiling or running a span.
    #[error(transparent)]
    Onnx(#[from] adaptivenet_onnx::Error),
    /// tract refused to build a tensor.
    #[error("tract: {0}")]
    Tract(String),
    /// An operating-system error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored result that cannot be read or written as JSON.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The bundle, the data or the request does not allow the search
    /// (shapes that disagree, an empty data set, a branch without a plan...).
    #[error("{0}")]
    Invalid(String),
    /// The SVG chart could not be drawn.
    #[error("{}: drawing the chart: {message}", path.display())]
    Chart { path: PathBuf, message: String },
    /// What was being done when `source` failed.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<SearchError>,
    },
}

impl From<adaptivenet_onnx::tract_onnx::prelude::TractError> for SearchError {
    fn from(e: adaptivenet_onnx::tract_onnx::prelude::TractError) -> Self {
        SearchError::Tract(format!("{e:#}"))
    }
}

impl SearchError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SearchError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SearchError>;

/// Adds what was being done to an error (`anyhow`-style, typed).
pub(crate) trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<SearchError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.with_context(|| what.to_string())
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| SearchError::Context {
            context: what(),
            source: Box::new(e.into()),
        })
    }
}

/// `SearchError::Invalid` from a format string.
macro_rules! invalid {
    ($($t:tt)*) => { $crate::error::SearchError::Invalid(format!($($t)*)) };
}
pub(crate) use invalid;
