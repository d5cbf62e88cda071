//! A batch in packed form: only real tokens, concatenated, plus the indexes that place
//! them in the padded `[rows, len]` grid that attention needs.
//!
//! Every op of the encoder except attention works per token, so running those on the
//! packed `[tokens, hidden]` matrix skips the padding entirely; only attention scatters
//! into the padded grid and gathers back.

use std::ops::Range;
use tch::{Device, Kind, TchError, Tensor};

/// Device tensors describing one batch.
pub struct PackedBatch {
    /// `[tokens]` token ids of all rows, concatenated.
    pub token_ids: Tensor,
    /// `[tokens]` each token's segment (0 or 1) for pair inputs; `None`: all 0.
    pub token_types: Option<Tensor>,
    /// `[tokens]` each token's position within its row.
    pub positions: Tensor,
    /// `[tokens]` each token's row.
    pub row_of_token: Tensor,
    /// `[rows]` tokens per row, as fp32 for the mean.
    pub lengths: Tensor,
    /// Consecutive runs of rows whose attention runs together, each in a grid padded to
    /// its own longest row ([`plan_attention_groups`]).
    pub groups: Vec<AttentionGroup>,
}

/// Rows whose self-attention runs as one padded grid `[rows, padded_len]`.
pub struct AttentionGroup {
    /// Index of the group's first token among the batch's packed tokens.
    pub first_token: i64,
    /// The group's tokens (its rows' tokens are consecutive in the packed order).
    pub tokens: i64,
    /// Rows in the group.
    pub rows: i64,
    /// Length of the group's longest row (on the CPU rounded up to a multiple of
    /// [`CPU_ATTENTION_ALIGN`]).
    pub padded_len: i64,
    /// `[tokens]` each token's index in the flattened `[rows * padded_len]` grid.
    pub slots: Tensor,
    /// `[rows, 1, 1, padded_len]` true where a key is a real token; `None` when every row
    /// of the group is `padded_len` long (nothing to mask).
    pub attend: Option<Tensor>,
}

/// The fixed cost of one more attention group, in the unit of [`plan_attention_groups`]'s
/// padded work (rows x length^2): what one row of 32 tokens costs in attention, so that a
/// group is split off only where it saves more than the extra ops' dispatch. Measured on
/// 2 AMD EPYC vCPUs (docs/benchmarks.md, "Attention in groups of similar length"): costs
/// from 0 (one group per distinct length) to 48^2 ran within noise of each other, one
/// group for the whole batch 25% slower on query-sized batches.
pub const CPU_GROUP_COST: usize = 32 * 32;

/// On the CPU each group's grid is padded up to a multiple of this many tokens (the
/// padding keys masked out): ATen's CPU attention kernel runs a length just short of a
/// multiple of 16 up to twice as slow as the next multiple. One layer's attention of 10
/// rows, 12 heads of 32, one thread, on the 2-vCPU Intel Xeon with AMX, fp32: 44 tokens
/// 1.10 ms, 48 tokens 0.65 ms; 60 tokens 1.66 ms, 64 tokens 1.02 ms; bf16 alike
/// (docs/benchmarks.md, "Attention on lengths of a multiple of 16").
pub const CPU_ATTENTION_ALIGN: usize = 16;

/// `len` rounded up to a multiple of `align` (at least 1).
pub fn aligned(len: usize, align: usize) -> usize {
    let align = align.max(1);
    len.div_ceil(align) * align
}

/// Cuts rows (in batch order) into consecutive groups minimising the padded attention
/// work, the sum over groups of rows x padded-length^2 (the longest row's length rounded
/// up to a multiple of `align`), plus `group_cost` per group.
/// Attention is the only op of the encoder that runs on a padded grid, and its work grows
/// with the square of the padded length: one 200-token row among 40-token ones pads them
/// all to 200. Rows sorted by length (as the batcher sends them) cut best.
pub fn plan_attention_groups(
    lengths: &[usize],
    group_cost: usize,
    align: usize,
) -> Vec<Range<usize>> {
    let n = lengths.len();
    if n == 0 {
        return Vec::new();
    }
    // best[i]: the least cost of rows 0..i; cut[i]: where the last group of that plan starts.
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for i in 1..=n {
        let mut longest = 0;
        best[i] = usize::MAX;
        for j in (0..i).rev() {
            longest = longest.max(lengths[j]);
            let padded = aligned(longest, align);
            let cost = best[j]
                .saturating_add(group_cost)
                .saturating_add((i - j).saturating_mul(padded.saturating_mul(padded)));
            // On a tie the larger group (fewer ops) wins.
            if cost <= best[i] {
                best[i] = cost;
                cut[i] = j;
            }
        }
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        groups.push(cut[end]..end);
        end = cut[end];
    }
    groups.reverse();
    groups
}

impl PackedBatch {
    /// Packs the token ids of `rows` and moves them to `device`: one copy of index data,
    /// through pinned memory and non-blocking on CUDA so it overlaps with host work. On
    /// the CPU, attention runs in groups of rows of similar length
    /// ([`plan_attention_groups`]), each padded to a multiple of [`CPU_ATTENTION_ALIGN`];
    /// on GPUs, where padded attention costs little against the extra kernel launches, in
    /// one group padded to its longest row.
    pub fn new(rows: &[&[i64]], device: Device) -> Result<PackedBatch, TchError> {
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let (plan, align) = match device {
            Device::Cpu => (
                plan_attention_groups(&lengths, CPU_GROUP_COST, CPU_ATTENTION_ALIGN),
                CPU_ATTENTION_ALIGN,
            ),
            _ => (std::iter::once(0..rows.len()).collect(), 1),
        };
        PackedBatch::grouped(rows, &plan, align, device)
    }

    /// Packs `rows` with attention in the given consecutive groups of rows, each group's
    /// grid padded to its longest row rounded up to a multiple of `align`.
    pub fn grouped(
        rows: &[&[i64]],
        plan: &[Range<usize>],
        align: usize,
        device: Device,
    ) -> Result<PackedBatch, TchError> {
        let tokens: usize = rows.iter().map(|r| r.len()).sum();
        // Four index vectors in one host buffer: ids, positions, slots, row numbers.
        let mut host = vec![0i64; 4 * tokens];
        let (ids, rest) = host.split_at_mut(tokens);
        let (positions, rest) = rest.split_at_mut(tokens);
        let (slots, row_of_token) = rest.split_at_mut(tokens);
        let mut shapes = Vec::with_capacity(plan.len());
        let mut t = 0;
        for range in plan {
            let first_token = t;
            let longest = rows[range.clone()].iter().map(|r| r.len()).max();
            let padded_len = aligned(longest.unwrap_or(0), align);
            for (in_group, r) in range.clone().enumerate() {
                for (p, &id) in rows[r].iter().enumerate() {
                    ids[t] = id;
                    positions[t] = p as i64;
                    slots[t] = (in_group * padded_len + p) as i64;
                    row_of_token[t] = r as i64;
                    t += 1;
                }
            }
            let ragged = rows[range.clone()].iter().any(|r| r.len() != padded_len);
            shapes.push((
                first_token,
                t - first_token,
                range.len(),
                padded_len,
                ragged,
            ));
        }
        let lengths: Vec<i64> = rows.iter().map(|r| r.len() as i64).collect();
        let index = upload(
            Tensor::from_slice(&host).f_view([4, tokens as i64])?,
            device,
        )?;
        let lengths = upload(Tensor::from_slice(&lengths), device)?;
        let all_slots = index.f_get(2)?;
        let mut groups = Vec::with_capacity(shapes.len());
        for ((first_token, count, group_rows, padded_len, ragged), range) in
            shapes.into_iter().zip(plan)
        {
            let (first_token, count) = (first_token as i64, count as i64);
            let (group_rows, padded_len) = (group_rows as i64, padded_len as i64);
            let attend = match ragged {
                false => None,
                true => {
                    let group_lengths = lengths
                        .f_narrow(0, range.start as i64, group_rows)?
                        .f_unsqueeze(1)?;
                    let key_positions = Tensor::f_arange(padded_len, (Kind::Int64, device))?;
                    Some(
                        key_positions
                            .f_unsqueeze(0)?
                            .f_lt_tensor(&group_lengths)?
                            .f_view([group_rows, 1, 1, padded_len])?,
                    )
                }
            };
            groups.push(AttentionGroup {
                first_token,
                tokens: count,
                rows: group_rows,
                padded_len,
                slots: all_slots.f_narrow(0, first_token, count)?,
                attend,
            });
        }
        Ok(PackedBatch {
            token_ids: index.f_get(0)?,
            token_types: None,
            positions: index.f_get(1)?,
            row_of_token: index.f_get(3)?,
            lengths: lengths.f_to_kind(Kind::Float)?,
            groups,
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

    fn one_group(rows: usize) -> Vec<Range<usize>> {
        std::iter::once(0..rows).collect()
    }

    #[test]
    fn no_group_when_a_batch_is_empty_and_one_for_rows_of_one_length() {
        assert!(plan_attention_groups(&[], CPU_GROUP_COST, 1).is_empty());
        assert_eq!(plan_attention_groups(&[7, 7, 7], 0, 1), one_group(3));
        assert_eq!(plan_attention_groups(&[7, 7, 7], 0, 16), one_group(3));
    }

    #[test]
    fn a_long_row_gets_a_group_of_its_own_when_it_saves_more_than_the_group_costs() {
        // Padding the three short rows to 200 costs 3 x 200^2; their own group 3 x 40^2.
        assert_eq!(
            plan_attention_groups(&[30, 35, 40, 200], 1024, 1),
            [0..3, 3..4]
        );
        // Saving 3 x (45^2 - 40^2) = 1,275 is not worth a group of cost 2,000 ...
        assert_eq!(
            plan_attention_groups(&[40, 40, 40, 45], 2000, 1),
            one_group(4)
        );
        // ... but is worth one of cost 1,000 ...
        assert_eq!(
            plan_attention_groups(&[40, 40, 40, 45], 1000, 1),
            [0..3, 3..4]
        );
        // ... unless both lengths pad to the same multiple of 16 (48): nothing saved.
        assert_eq!(
            plan_attention_groups(&[40, 40, 40, 45], 1000, 16),
            one_group(4)
        );
    }

    #[test]
    fn groups_are_consecutive_runs_whatever_the_order_of_the_rows() {
        let plan = plan_attention_groups(&[200, 10, 10, 190, 12], 0, 1);
        assert_eq!(plan, [0..1, 1..3, 3..4, 4..5]);
        let plan = plan_attention_groups(&[200, 10, 10, 190, 12], 1 << 40, 1);
        assert_eq!(plan, one_group(5));
    }

    #[test]
    fn rows_of_one_length_need_no_mask_and_ragged_groups_mask_their_padding() {
        let batch = PackedBatch::grouped(
            &[&[1, 2], &[3, 4], &[5, 6, 7]],
            &[0..2, 2..3],
            1,
            Device::Cpu,
        )
        .unwrap();
        assert!(batch.groups.iter().all(|g| g.attend.is_none()));
        let vec = |t: &Tensor| Vec::<i64>::try_from(t).unwrap();
        assert_eq!(vec(&batch.groups[0].slots), [0, 1, 2, 3]);
        assert_eq!(vec(&batch.groups[1].slots), [0, 1, 2]);
        assert_eq!(batch.groups[1].first_token, 4);
    }

    #[test]
    fn tokens_are_placed_in_the_padded_grid_row_by_row() {
        let batch =
            PackedBatch::grouped(&[&[7, 8], &[9, 10, 11]], &one_group(2), 1, Device::Cpu).unwrap();
        let vec = |t: &Tensor| Vec::<i64>::try_from(t).unwrap();
        assert_eq!(vec(&batch.token_ids), [7, 8, 9, 10, 11]);
        assert_eq!(vec(&batch.positions), [0, 1, 0, 1, 2]);
        assert_eq!(vec(&batch.groups[0].slots), [0, 1, 3, 4, 5]);
        assert_eq!(vec(&batch.row_of_token), [0, 0, 1, 1, 1]);
        let attend = batch.groups[0].attend.as_ref().unwrap();
        let attend = Vec::<bool>::try_from(&attend.view([-1])).unwrap();
        assert_eq!(attend, [true, true, false, true, true, true]);
    }

    #[test]
    fn grids_padded_to_a_multiple_mask_the_padding_even_for_rows_of_one_length() {
        let batch =
            PackedBatch::grouped(&[&[1, 2], &[3, 4]], &one_group(2), 4, Device::Cpu).unwrap();
        let group = &batch.groups[0];
        assert_eq!((group.rows, group.padded_len), (2, 4));
        assert_eq!(Vec::<i64>::try_from(&group.slots).unwrap(), [0, 1, 4, 5]);
        let attend = group.attend.as_ref().expect("the padding keys are masked");
        let attend = Vec::<bool>::try_from(&attend.view([-1])).unwrap();
        assert_eq!(attend, [true, true, false, false, true, true, false, false]);
        // A length that is already a multiple needs no mask.
        let batch = PackedBatch::grouped(&[&[1, 2, 3, 4]], &one_group(1), 4, Device::Cpu).unwrap();
        assert!(batch.groups[0].attend.is_none());
        assert_eq!(
            (
                aligned(0, 16),
                aligned(1, 16),
                aligned(16, 16),
                aligned(17, 16)
            ),
            (0, 16, 16, 32)
        );
        assert_eq!(aligned(5, 0), 5, "0 is taken as 1");
    }
}
