//! A BERT encoder on raw libtorch tensors, inference only.
//!
//! Weights come straight from `model.safetensors` (HF `BertModel` names, with or without a
//! `bert.` prefix). The maths follows HF `BertModel` in eval mode: no dropout, exact (erf)
//! GELU, post-LayerNorm residual blocks. Every op uses tch's fallible `f_` form so that a
//! CUDA out-of-memory error comes back as an `Err` the executor can react to, not a panic.

use crate::model_config::BertConfig;
use crate::onednn::{self, Activation};
use crate::packing::{AttentionGroup, PackedBatch};
use crate::EmbedError;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, TchError, Tensor};

/// Packed products run on a multiple of this many rows ([`BertEncoder::forward`]).
const ROW_ALIGN: i64 = 32;

pub(crate) struct Linear {
    /// `[out, in]`, in oneDNN's blocked layout when `packed`.
    weight: Tensor,
    bias: Tensor,
    /// The weight is packed for [`onednn::linear`] (bf16 on the CPU, and fp32 where
    /// [`onednn::fp32_packing_pays`]).
    packed: bool,
}

impl Linear {
    fn share(&self) -> Linear {
        Linear {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
            packed: self.packed,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        match self.packed {
            true => onednn::linear(x, &self.weight, &self.bias, Activation::None),
            false => x.f_linear(&self.weight, Some(&self.bias)),
        }
    }

    /// [`Linear::forward`] then exact GELU, in one pass where the weight is packed.
    fn forward_gelu(&self, x: &Tensor) -> Result<Tensor, TchError> {
        match self.packed {
            true => onednn::linear(x, &self.weight, &self.bias, Activation::Gelu),
            false => self.forward(x)?.f_gelu("none"),
        }
    }

    /// The weight packed for oneDNN where that is faster: bf16 on the CPU, fp32 on the
    /// CPU where `pack_fp32` (GPUs do not use oneDNN). A libtorch that refuses (built
    /// without oneDNN) or whose packed products do not match its plain ones
    /// ([`onednn::pack_checked`]) keeps the plain product, said once in the log.
    fn packed_for(self, device: Device, kind: Kind, pack_fp32: bool) -> Linear {
        let pack = match kind {
            Kind::BFloat16 => true,
            Kind::Float => pack_fp32,
            _ => false,
        };
        if device != Device::Cpu || !pack {
            return self;
        }
        match onednn::pack_checked(&self.weight, &self.bias) {
            Ok(weight) => Linear {
                weight,
                bias: self.bias,
                packed: true,
            },
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(error = %e, "oneDNN packed weights not used: linear \
                        layers on the CPU run libtorch's plain product")
                });
                self
            }
        }
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn share(&self) -> LayerNorm {
        LayerNorm {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
            eps: self.eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let width = self.weight.size()[0];
        x.f_layer_norm(
            [width],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

struct Layer {
    /// Query, key and value projections concatenated, so one matmul serves all three.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn share(&self) -> Layer {
        Layer {
            qkv: self.qkv.share(),
            attention_out: self.attention_out.share(),
            attention_norm: self.attention_norm.share(),
            intermediate: self.intermediate.share(),
            output: self.output.share(),
            output_norm: self.output_norm.share(),
        }
    }
}

/// The encoder of one model replica, resident on one device in one precision.
pub struct BertEncoder {
    word_embeddings: Tensor,
    /// Position embeddings with token type 0 already added: single-text inputs never use
    /// another segment, so the per-token lookup of the type table is folded away.
    position_and_type: Tensor,
    /// Each token type's embedding minus type 0's (already in `position_and_type`), for
    /// pair inputs (a cross-encoder's query and passage segments).
    type_offsets: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: i64,
    hidden: i64,
}

/// The named tensors of the safetensors file, converted on demand.
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
    device: Device,
    kind: Kind,
    /// fp32 linear layers on the CPU are packed for oneDNN.
    pack_fp32: bool,
}

impl Weights {
    pub(crate) fn read(path: &Path, device: Device, kind: Kind) -> Result<Weights, EmbedError> {
        let named = Tensor::read_safetensors(path)
            .map_err(|e| EmbedError::ModelLoad(format!("{}: {e}", path.display())))?;
        let tensors = named
            .into_iter()
            .map(|(name, t)| (name.strip_prefix("bert.").unwrap_or(&name).to_string(), t))
            .collect();
        let pack_fp32 = device == Device::Cpu && kind == Kind::Float && onednn::fp32_packing_pays();
        Ok(Weights {
            tensors,
            device,
            kind,
            pack_fp32,
        })
    }

    fn take(&mut self, name: &str) -> Result<Tensor, EmbedError> {
        let tensor = self.tensors.remove(name).ok_or_else(|| {
            EmbedError::ModelLoad(format!("model.safetensors has no tensor {name:?}"))
        })?;
        tensor
            .f_to_dtype(self.kind, false, false)
            .and_then(|t| t.f_to_device(self.device))
            .map_err(|e| EmbedError::Device(format!("moving {name} to {:?}: {e}", self.device)))
    }

    pub(crate) fn linear(&mut self, prefix: &str) -> Result<Linear, EmbedError> {
        Ok(Linear {
            weight: self.take(&format!("{prefix}.weight"))?,
            bias: self.take(&format!("{prefix}.bias"))?,
            packed: false,
        })
    }

    fn layer_norm(&mut self, prefix: &str, eps: f64) -> Result<LayerNorm, EmbedError> {
        Ok(LayerNorm {
            weight: self.take(&format!("{prefix}.weight"))?,
            bias: self.take(&format!("{prefix}.bias"))?,
            eps,
        })
    }

    fn layer(&mut self, index: usize, eps: f64) -> Result<Layer, EmbedError> {
        let p = format!("encoder.layer.{index}");
        let q = self.linear(&format!("{p}.attention.self.query"))?;
        let k = self.linear(&format!("{p}.attention.self.key"))?;
        let v = self.linear(&format!("{p}.attention.self.value"))?;
        let qkv = Linear {
            weight: Tensor::f_cat(&[q.weight, k.weight, v.weight], 0)?,
            bias: Tensor::f_cat(&[q.bias, k.bias, v.bias], 0)?,
            packed: false,
        };
        let (device, kind, pack_fp32) = (self.device, self.kind, self.pack_fp32);
        let mut linear = |name: &str| -> Result<Linear, EmbedError> {
            Ok(self
                .linear(&format!("{p}.{name}"))?
                .packed_for(device, kind, pack_fp32))
        };
        let attention_out = linear("attention.output.dense")?;
        let intermediate = linear("intermediate.dense")?;
        let output = linear("output.dense")?;
        Ok(Layer {
            qkv: qkv.packed_for(device, kind, pack_fp32),
            attention_out,
            attention_norm: self.layer_norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
            intermediate,
            output,
            output_norm: self.layer_norm(&format!("{p}.output.LayerNorm"), eps)?,
        })
    }
}

impl BertEncoder {
    /// Another handle on the same weights (no copy), for a second executor on the same
    /// device: forward passes only read the weights, so executors can share them.
    pub fn share(&self) -> BertEncoder {
        BertEncoder {
            word_embeddings: self.word_embeddings.shallow_clone(),
            position_and_type: self.position_and_type.shallow_clone(),
            type_offsets: self.type_offsets.shallow_clone(),
            embedding_norm: self.embedding_norm.share(),
            layers: self.layers.iter().map(Layer::share).collect(),
            heads: self.heads,
            hidden: self.hidden,
        }
    }

    /// Loads `model.safetensors` onto `device` in `kind` (Float, Half or BFloat16).
    pub fn load(
        weights_path: &Path,
        cfg: &BertConfig,
        device: Device,
        kind: Kind,
    ) -> Result<BertEncoder, EmbedError> {
        let _no_grad = tch::no_grad_guard();
        let mut w = Weights::read(weights_path, device, kind)?;
        BertEncoder::from_weights(&mut w, cfg)
    }

    /// The encoder's tensors taken out of `w`; the rest (a pooler, a classifier) stay.
    pub(crate) fn from_weights(
        w: &mut Weights,
        cfg: &BertConfig,
    ) -> Result<BertEncoder, EmbedError> {
        let word_embeddings = w.take("embeddings.word_embeddings.weight")?;
        check_shape(
            &word_embeddings,
            &[cfg.vocab_size, cfg.hidden_size],
            "word_embeddings",
        )?;
        let positions = w.take("embeddings.position_embeddings.weight")?;
        let token_type = w.take("embeddings.token_type_embeddings.weight")?;
        let position_and_type = positions.f_add(&token_type.f_get(0)?)?;
        let type_offsets = token_type.f_sub(&token_type.f_get(0)?)?;
        let eps = cfg.layer_norm_eps;
        let embedding_norm = w.layer_norm("embeddings.LayerNorm", eps)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| w.layer(i, eps))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BertEncoder {
            word_embeddings,
            position_and_type,
            type_offsets,
            embedding_norm,
            layers,
            heads: cfg.num_attention_heads,
            hidden: cfg.hidden_size,
        })
    }

    /// Last hidden states `[tokens, hidden]` of the packed batch's real tokens.
    pub fn forward(&self, batch: &PackedBatch) -> Result<Tensor, TchError> {
        let words = Tensor::f_embedding(&self.word_embeddings, &batch.token_ids, -1, false, false)?;
        let positions =
            Tensor::f_embedding(&self.position_and_type, &batch.positions, -1, false, false)?;
        let mut embedded = words.f_add(&positions)?;
        if let Some(types) = &batch.token_types {
            let offsets = Tensor::f_embedding(&self.type_offsets, types, -1, false, false)?;
            embedded = embedded.f_add(&offsets)?;
        }
        let mut x = self.embedding_norm.forward(&embedded)?;
        let tokens = x.size()[0];
        let pad = self.row_padding(tokens);
        if pad > 0 {
            x = x.f_constant_pad_nd([0, 0, 0, pad])?;
        }
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, batch, pad)?;
        }
        match pad {
            0 => Ok(x),
            _ => x.f_narrow(0, 0, tokens),
        }
    }

    /// Rows of zeros added to a batch's `tokens` for the per-token products: with packed
    /// weights every product runs on a multiple of [`ROW_ALIGN`] rows, so
    /// oneDNN meets a few dozen shapes and reuses their compiled kernels from its cache;
    /// each new row count used to compile new ones (more than the product itself costs).
    fn row_padding(&self, tokens: i64) -> i64 {
        let packed = self.layers.first().is_some_and(|l| l.qkv.packed);
        match packed {
            true => (ROW_ALIGN - tokens % ROW_ALIGN) % ROW_ALIGN,
            false => 0,
        }
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        batch: &PackedBatch,
        pad: i64,
    ) -> Result<Tensor, TchError> {
        let mut qkv = layer.qkv.forward(x)?;
        if pad > 0 {
            qkv = qkv.f_narrow(0, 0, qkv.size()[0] - pad)?;
        }
        let mut context = self.attention(&qkv, batch)?;
        if pad > 0 {
            context = context.f_constant_pad_nd([0, 0, 0, pad])?;
        }
        let attended = layer
            .attention_norm
            .forward(&layer.attention_out.forward(&context)?.f_add(x)?)?;
        let inner = layer.intermediate.forward_gelu(&attended)?;
        layer
            .output_norm
            .forward(&layer.output.forward(&inner)?.f_add(&attended)?)
    }

    /// Self-attention of packed `qkv` `[tokens, 3 * hidden]`, group by group
    /// ([`crate::packing::AttentionGroup`]): each group's rows are scattered into a grid
    /// padded to its own longest row for `scaled_dot_product_attention` (padding keys
    /// masked out), and the context of the real tokens gathered back.
    fn attention(&self, qkv: &Tensor, batch: &PackedBatch) -> Result<Tensor, TchError> {
        let mut contexts = Vec::with_capacity(batch.groups.len());
        for group in &batch.groups {
            let qkv = match batch.groups.len() {
                1 => qkv.shallow_clone(),
                _ => qkv.f_narrow(0, group.first_token, group.tokens)?,
            };
            contexts.push(self.group_attention(&qkv, group)?);
        }
        match contexts.len() {
            1 => Ok(contexts.pop().expect("one group")),
            _ => Tensor::f_cat(&contexts, 0),
        }
    }

    fn group_attention(&self, qkv: &Tensor, group: &AttentionGroup) -> Result<Tensor, TchError> {
        let (rows, len) = (group.rows, group.padded_len);
        let head_dim = self.hidden / self.heads;
        let grid = match &group.attend {
            // Nothing padded: the packed tokens are the grid.
            None => qkv.shallow_clone(),
            Some(_) => Tensor::f_zeros([rows * len, 3 * self.hidden], (qkv.kind(), qkv.device()))?
                .f_index_copy(0, &group.slots, qkv)?,
        }
        .f_view([rows, len, 3, self.heads, head_dim])?
        .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (grid.f_get(0)?, grid.f_get(1)?, grid.f_get(2)?);
        let context = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            group.attend.as_ref(),
            0.0,
            false,
            None,
            false,
        )?
        .f_transpose(1, 2)?
        .f_reshape([rows * len, self.hidden])?;
        match &group.attend {
            None => Ok(context),
            Some(_) => context.f_index_select(0, &group.slots),
        }
    }
}

fn check_shape(t: &Tensor, expected: &[i64], name: &str) -> Result<(), EmbedError> {
    if t.size() == expected {
        Ok(())
    } else {
        Err(EmbedError::ModelLoad(format!(
            "{name} has shape {:?}, config.json implies {expected:?}",
            t.size()
        )))
    }
}

#[cfg(test)]
mod tests;
