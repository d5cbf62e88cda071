//! A batch in packed form: only real tokens, concatenated, plus the indexes that place
//! them in the padded `[rows, len]` grid that attention needs.
//!
//! Every op of the encoder except attention works per token, so running those on the
//! packed `[tokens, hidden]` matrix skips the padding entirely; only attention scatters
//! into the padded grid and gathers back.

use tch::{Device, Kind, TchError, Tensor};

/// Device tensors describing one batch.
pub struct PackedBatch {
    /// `[tokens]` token ids of all rows, concatenated.
    pub token_ids: Tensor,
    /// `[tokens]` each token's segment (0 or 1) for pair inputs; `None`: all 0.
    pub token_types: Option<Tensor>,
    /// `[tokens]` each token's position within its row.
    pub positions: Tensor,
    /// `[tokens]` each token's index in the flattened `[rows * padded_len]` grid.
    pub slots: Tensor,
    /// `[tokens]` each token's row.
    pub row_of_token: Tensor,
    /// `[rows]` tokens per row, as fp32 for the mean.
    pub lengths: Tensor,
    /// `[rows, 1, 1, padded_len]` true where a key is a real token.
    pub attend: Tensor,
    /// Rows in the batch.
    pub rows: i64,
    /// Length of the longest row.
    pub padded_len: i64,
}

impl PackedBatch {
    /// Packs the token ids of `rows` and moves them to `device`: one copy of index data,
    /// through pinned memory and non-blocking on CUDA so it overlaps with host work.
    pub fn new(rows: &[&[i64]], device: Device) -> Result<PackedBatch, TchError> {
        let padded_len = rows.iter().map(|r| r.len()).max().unwrap_or(0) as i64;
        let tokens: usize = rows.iter().map(|r| r.len()).sum();
        // Four index vectors in one host buffer: ids, positions, slots, row numbers.
        let mut host = vec![0i64; 4 * tokens];
        let (ids, rest) = host.split_at_mut(tokens);
        let (positions, rest) = rest.split_at_mut(tokens);
        let (slots, row_of_token) = rest.split_at_mut(tokens);
        let mut t = 0;
        for (r, row) in rows.iter().enumerate() {
            for (p, &id) in row.iter().enumerate() {
                ids[t] = id;
                positions[t] = p as i64;
                slots[t] = r as i64 * padded_len + p as i64;
                row_of_token[t] = r as i64;
                t += 1;
            }
        }
        let lengths: Vec<i64> = rows.iter().map(|r| r.len() as i64).collect();
        let index = upload(
            Tensor::from_slice(&host).f_view([4, tokens as i64])?,
            device,
        )?;
        let lengths = upload(Tensor::from_slice(&lengths), device)?;
        let key_positions = Tensor::f_arange(padded_len, (Kind::Int64, device))?;
        let attend = key_positions
            .f_unsqueeze(0)?
            .f_lt_tensor(&lengths.f_unsqueeze(1)?)?
            .f_view([rows.len() as i64, 1, 1, padded_len])?;
        Ok(PackedBatch {
            token_ids: index.f_get(0)?,
            token_types: None,
            positions: index.f_get(1)?,
            slots: index.f_get(2)?,
            row_of_token: index.f_get(3)?,
            lengths: lengths.f_to_kind(Kind::Float)?,
            attend,
            rows: rows.len() as i64,
            padded_len,
        })
    }
}

impl PackedBatch {
    /// A batch of pair inputs: `types` gives each row's token types, as long as its ids.
    pub fn with_token_types(
        rows: &[&[i64]],
        types: &[&[i64]],
        device: Device,
    ) -> Result<PackedBatch, TchError> {
        let mut batch = PackedBatch::new(rows, device)?;
        let flat: Vec<i64> = types.iter().flat_map(|t| t.iter().copied()).collect();
        batch.token_types = Some(upload(Tensor::from_slice(&flat), device)?);
        Ok(batch)
    }

    /// `[rows]` the index of each row's first token (`[CLS]`) among the packed tokens.
    pub fn first_tokens(&self) -> Result<Tensor, TchError> {
        let lengths = self.lengths.f_to_kind(Kind::Int64)?;
        lengths.f_cumsum(0, Kind::Int64)?.f_sub(&lengths)
    }
}

fn upload(host: Tensor, device: Device) -> Result<Tensor, TchError> {
    if device == Device::Cpu {
        return Ok(host);
    }
    host.f_pin_memory(device)?
        .f_to_device_(device, Kind::Int64, true, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_placed_in_the_padded_grid_row_by_row() {
        let batch = PackedBatch::new(&[&[7, 8], &[9, 10, 11]], Device::Cpu).unwrap();
        let vec = |t: &Tensor| Vec::<i64>::try_from(t).unwrap();
        assert_eq!(vec(&batch.token_ids), [7, 8, 9, 10, 11]);
        assert_eq!(vec(&batch.positions), [0, 1, 0, 1, 2]);
        assert_eq!(vec(&batch.slots), [0, 1, 3, 4, 5]);
        assert_eq!(vec(&batch.row_of_token), [0, 0, 1, 1, 1]);
        let attend = Vec::<bool>::try_from(&batch.attend.view([-1])).unwrap();
        assert_eq!(attend, [true, true, false, true, true, true]);
    }
}
