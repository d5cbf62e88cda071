//! One caller's request while its texts travel through batches, and its answer.

use crate::batcher::Lane;
use crate::stats::Counters;
use crate::tokenize::TokenizedText;
use crate::EmbedError;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The answer to one request: one entry per input text, in input order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Embedded {
    /// Unit-length embeddings, [`crate::Embedder::dim`] values each.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens each text was encoded as, after truncation, special tokens included.
    pub token_counts: Vec<usize>,
    /// Whether each text was cut at [`crate::Embedder::max_seq_len`] tokens.
    pub truncated: Vec<bool>,
}

pub(crate) type Reply = oneshot::Sender<Result<Embedded, EmbedError>>;

struct Progress {
    answer: Embedded,
    remaining: usize,
    reply: Option<Reply>,
}

/// A request whose rows may be spread over several batches and devices; the last row in
/// sends the whole answer. Its texts count towards the queue depth until it is answered,
/// whichever way that happens (dropping it unanswered answers `ShuttingDown`).
pub(crate) struct PendingRequest {
    progress: Mutex<Progress>,
    counters: Arc<Counters>,
    lane: Lane,
    texts: usize,
}

/// One text of a request, tokenized, waiting for a batch.
pub(crate) struct Row {
    pub request: Arc<PendingRequest>,
    pub index: usize,
    pub ids: Vec<i64>,
}

impl PendingRequest {
    /// Starts a request of `texts` texts; the caller has already added them to the
    /// depth of `lane`.
    pub(crate) fn new(
        texts: usize,
        lane: Lane,
        reply: Reply,
        counters: Arc<Counters>,
    ) -> PendingRequest {
        let answer = Embedded {
            vectors: vec![Vec::new(); texts],
            token_counts: vec![0; texts],
            truncated: vec![false; texts],
        };
        PendingRequest {
            progress: Mutex::new(Progress {
                answer,
                remaining: texts,
                reply: Some(reply),
            }),
            counters,
            lane,
            texts,
        }
    }

    /// Turns tokenized texts of this request, the first being input `offset`, into rows
    /// for the batcher.
    pub(crate) fn rows(self: &Arc<Self>, offset: usize, tokenized: Vec<TokenizedText>) -> Vec<Row> {
        let mut progress = self.lock();
        tokenized
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                let index = offset + i;
                progress.answer.token_counts[index] = text.ids.len();
                progress.answer.truncated[index] = text.truncated;
                Row {
                    request: Arc::clone(self),
                    index,
                    ids: text.ids,
                }
            })
            .collect()
    }

    /// Whether nothing more is owed: answered already (an error, say) or the caller gave
    /// up waiting. Work for such a request is skipped.
    pub(crate) fn is_settled(&self) -> bool {
        self.lock()
            .reply
            .as_ref()
            .is_none_or(oneshot::Sender::is_closed)
    }

    /// Stores one row's vector; the last one answers the caller.
    pub(crate) fn deliver(&self, index: usize, vector: Vec<f32>) {
        let mut progress = self.lock();
        if progress.reply.is_none() {
            return;
        }
        progress.answer.vectors[index] = vector;
        progress.remaining -= 1;
        if progress.remaining == 0 {
            let answer = std::mem::take(&mut progress.answer);
            self.answer(&mut progress, Ok(answer));
        }
    }

    /// Answers with an error; rows of this request still in flight are then ignored.
    pub(crate) fn fail(&self, err: EmbedError) {
        let mut progress = self.lock();
        self.answer(&mut progress, Err(err));
    }

    fn answer(&self, progress: &mut Progress, result: Result<Embedded, EmbedError>) {
        if let Some(reply) = progress.reply.take() {
            self.counters.sub_depth(self.lane, self.texts);
            // The caller may have given up (dropped its future); nothing is owed then.
            let _ = reply.send(result);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        // A panic elsewhere cannot leave Progress inconsistent (every update is one step).
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        let mut progress = self.lock();
        let pending = progress.reply.is_some();
        if pending {
            self.answer(&mut progress, Err(EmbedError::ShuttingDown));
        }
    }
}
