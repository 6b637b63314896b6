//! One error type for the whole crate: every failure a user can cause is a value with a
//! message meant for them, never a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read image {path}: {reason}")]
    ImageDecode { path: PathBuf, reason: String },

    #[error("image is {width} x {height} pixels; the limit is {limit} pixels")]
    ImageTooLarge { width: u64, height: u64, limit: u64 },

    #[error("cannot load model weights: {0}")]
    Weights(String),

    #[error("unknown model '{name}' (known: {known})")]
    UnknownModel { name: String, known: String },

    #[error("model '{name}' is not installed (no {path}); run `unveil models fetch {name}`")]
    ModelNotInstalled { name: String, path: PathBuf },

    #[error("cannot fetch the model: {0}")]
    Fetch(String),

    #[error("invalid parameter: {0}")]
    InvalidParam(String),

    #[error("{0}")]
    Device(String),

    #[error("output folder {} is not empty; choose another or allow overwriting", .0.display())]
    OutputExists(PathBuf),

    #[error("cannot read the run summary {path}: {reason}")]
    Summary { path: PathBuf, reason: String },

    #[error("{failed} image{} failed (see {})", if *.failed == 1 { "" } else { "s" }, .list.display())]
    BatchFailed { failed: usize, list: PathBuf },

    #[error("cannot open a window: {0}")]
    Window(String),

    #[error("class {class} is out of range: the model has {num_classes} classes")]
    ClassOutOfRange { class: usize, num_classes: usize },

    #[error("cancelled")]
    Cancelled,

    #[error("numerical fault: {0}")]
    Numeric(String),

    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A bug of ours caught at a thread boundary, reported instead of hanging or crashing.
    #[error("internal error: {0}; please report it")]
    Internal(String),

    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
