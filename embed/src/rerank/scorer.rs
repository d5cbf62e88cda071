//! The cross-encoder's network on one device: the BERT encoder of [`crate::bert`], the
//! pooler and the one-label classifier.

use super::Pair;
use crate::bert::{BertEncoder, Linear, Weights};
use crate::executor::is_out_of_memory;
use crate::model_config::BertConfig;
use crate::packing::PackedBatch;
use crate::EmbedError;
use std::path::Path;
use tch::{Device, Kind};

/// The cross-encoder's encoder plus its sequence-classification head, on one device.
pub(super) struct Scorer {
    encoder: BertEncoder,
    pooler: Linear,
    classifier: Linear,
    device: Device,
}

impl Scorer {
    /// Loads `path` onto `device` in `kind`; with `shared`, only the head is taken from
    /// the file and the encoder's weights are `shared`'s (CPU executors share one copy).
    pub(super) fn load(
        path: &Path,
        cfg: &BertConfig,
        device: Device,
        kind: Kind,
        shared: Option<&BertEncoder>,
    ) -> Result<Scorer, EmbedError> {
        let _no_grad = tch::no_grad_guard();
        let mut w = Weights::read(path, device, kind)?;
        let encoder = match shared {
            Some(encoder) => encoder.share(),
            None => BertEncoder::from_weights(&mut w, cfg)?,
        };
        Ok(Scorer {
            encoder,
            pooler: w.linear("pooler.dense")?,
            classifier: w.linear("classifier")?,
            device,
        })
    }

    /// The logits of `rows` (ids and token types).
    pub(super) fn logits(&self, rows: &[&Pair]) -> Result<Vec<f32>, tch::TchError> {
        let ids: Vec<&[i64]> = rows.iter().map(|r| r.ids.as_slice()).collect();
        let types: Vec<&[i64]> = rows.iter().map(|r| r.types.as_slice()).collect();
        let batch = PackedBatch::with_token_types(&ids, &types, self.device)?;
        let hidden = self.encoder.forward(&batch)?;
        let cls = hidden.f_index_select(0, &batch.first_tokens()?)?;
        let pooled = self.pooler.forward(&cls)?.f_tanh()?;
        let logits = self
            .classifier
            .forward(&pooled)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_view([-1])?;
        Vec::<f32>::try_from(&logits).map_err(|e| tch::TchError::Convert(e.to_string()))
    }

    /// [`Scorer::logits`], halving the rows when the device runs out of memory.
    pub(super) fn logits_splitting_on_oom(
        &self,
        rows: &[&Pair],
    ) -> Result<Vec<f32>, tch::TchError> {
        match self.logits(rows) {
            Err(err) if rows.len() > 1 && is_out_of_memory(&err) => {
                tracing::warn!(
                    rows = rows.len(),
                    "device out of memory, splitting rerank batch"
                );
                if self.device.is_cuda() {
                    crate::cuda_alloc::empty_cache();
                }
                let (first, second) = rows.split_at(rows.len() / 2);
                let mut logits = self.logits_splitting_on_oom(first)?;
                logits.extend(self.logits_splitting_on_oom(second)?);
                Ok(logits)
            }
            result => result,
        }
    }
}
