//! The one error type of the crate boundary.

/// Why an embedding request or model load failed.
///
/// The worker maps these to HTTP statuses: `QueueFull` to 429 (with `Retry-After`),
/// `EmptyInput`, `InvalidInput` and `Tokenize` to 400, `ShuttingDown` to 503, the rest to 500/503.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    /// The bounded queue holds `queue_capacity` texts already; try again later.
    #[error("embedding queue is full, retry in {retry_after_ms} ms")]
    QueueFull {
        /// Rough time for the queue to drain at the recent throughput.
        retry_after_ms: u64,
    },
    /// The model directory is missing a file, or a file is malformed or unsupported.
    #[error("cannot load model: {0}")]
    ModelLoad(String),
    /// The requested device does not exist or cannot be used.
    #[error("device error: {0}")]
    Device(String),
    /// The tokenizer rejected an input.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// libtorch failed while running the encoder.
    #[error("inference failed: {0}")]
    Inference(String),
    /// An input cannot be embedded as given (a token id outside the vocabulary, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// The request contained no texts.
    #[error("no texts to embed")]
    EmptyInput,
    /// The engine is being dropped and takes no more work.
    #[error("embedding engine is shutting down")]
    ShuttingDown,
}

impl EmbedError {
    /// A short stable name for metrics labels and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            EmbedError::QueueFull { .. } => "queue_full",
            EmbedError::ModelLoad(_) => "model_load",
            EmbedError::Device(_) => "device",
            EmbedError::Tokenize(_) => "tokenize",
            EmbedError::Inference(_) => "inference",
            EmbedError::InvalidInput(_) => "invalid_input",
            EmbedError::EmptyInput => "empty_input",
            EmbedError::ShuttingDown => "shutting_down",
        }
    }
}

impl From<tch::TchError> for EmbedError {
    fn from(err: tch::TchError) -> Self {
        EmbedError::Inference(err.to_string())
    }
}
