//! The one error type of the crate. Every fallible public function returns `Result<T>`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file or folder that cannot be used: truncated, inconsistent, unsupported.
    #[error("invalid model {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    /// A well-formed model of a kind this build cannot run.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A request or argument that cannot be served as given.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The engine stopped (shut down, or failed and refuses further work).
    #[error("engine failed: {0}")]
    EngineFailed(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    Template(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid_model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidModel {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
