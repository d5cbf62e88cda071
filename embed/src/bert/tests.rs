use super::*;
use crate::packing::{plan_attention_groups, CPU_GROUP_COST};
use std::ops::Range;

/// A two-layer encoder of width 16 with random weights.
fn random_encoder() -> BertEncoder {
    random_encoder_in(Kind::Float)
}

/// [`random_encoder`]'s weights (the same seed) in `kind`, fp32 products plain.
fn random_encoder_in(kind: Kind) -> BertEncoder {
    random_encoder_with(kind, false)
}

/// [`random_encoder_in`], fp32 products packed for oneDNN where `pack_fp32`.
fn random_encoder_with(kind: Kind, pack_fp32: bool) -> BertEncoder {
    let (hidden, inner, vocab, positions) = (16, 32, 50, 64);
    let mut tensors = HashMap::new();
    let mut add = |name: String, shape: &[i64]| {
        tensors.insert(name, pseudo_random(shape, 0.3, tensors.len() as u64));
    };
    add("embeddings.word_embeddings.weight".into(), &[vocab, hidden]);
    add(
        "embeddings.position_embeddings.weight".into(),
        &[positions, hidden],
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, hidden],
    );
    add("embeddings.LayerNorm.weight".into(), &[hidden]);
    add("embeddings.LayerNorm.bias".into(), &[hidden]);
    for l in 0..2 {
        let p = format!("encoder.layer.{l}");
        for (name, out, input) in [
            ("attention.self.query", hidden, hidden),
            ("attention.self.key", hidden, hidden),
            ("attention.self.value", hidden, hidden),
            ("attention.output.dense", hidden, hidden),
            ("intermediate.dense", inner, hidden),
            ("output.dense", hidden, inner),
        ] {
            add(format!("{p}.{name}.weight"), &[out, input]);
            add(format!("{p}.{name}.bias"), &[out]);
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{norm}.weight"), &[hidden]);
            add(format!("{p}.{norm}.bias"), &[hidden]);
        }
    }
    let cfg = BertConfig {
        hidden_size: hidden,
        num_attention_heads: 2,
        num_hidden_layers: 2,
        layer_norm_eps: 1e-12,
        vocab_size: vocab,
        max_position_embeddings: positions as usize,
        hidden_act: "gelu".into(),
        position_embedding_type: "absolute".into(),
    };
    let mut weights = Weights {
        tensors,
        device: Device::Cpu,
        kind,
        pack_fp32,
    };
    BertEncoder::from_weights(&mut weights, &cfg).unwrap()
}

/// Values spread evenly with the standard deviation of `randn * scale`, the same for the
/// same `shape` and `seed` (tests run in parallel threads, so libtorch's one global
/// generator cannot make two encoders with the same weights).
fn pseudo_random(shape: &[i64], scale: f64, seed: u64) -> Tensor {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (seed + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let count = shape.iter().product::<i64>() as usize;
    let values: Vec<f32> = (0..count)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let unit =
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            ((2.0 * unit - 1.0) * scale * 3f64.sqrt()) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}

fn rows(lengths: &[usize]) -> Vec<Vec<i64>> {
    lengths
        .iter()
        .enumerate()
        .map(|(r, &len)| (0..len).map(|t| ((r * 7 + t * 3) % 50) as i64).collect())
        .collect()
}

fn hidden_states(
    encoder: &BertEncoder,
    rows: &[Vec<i64>],
    plan: &[Range<usize>],
    align: usize,
) -> Tensor {
    let ids: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let batch = PackedBatch::grouped(&ids, plan, align, Device::Cpu).unwrap();
    encoder.forward(&batch).unwrap()
}

fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn attention_in_groups_gives_the_hidden_states_of_one_padded_grid() {
    let _no_grad = tch::no_grad_guard();
    let encoder = random_encoder();
    // Sorted as the batcher sends them, and in arbitrary order.
    for lengths in [&[2usize, 3, 3, 9, 30, 31][..], &[30, 2, 9, 3, 31, 3]] {
        let rows = rows(lengths);
        let n = rows.len();
        let whole = 0..n;
        let one_grid = hidden_states(&encoder, &rows, std::slice::from_ref(&whole), 1);
        let planned = plan_attention_groups(lengths, 0, 1);
        assert!(planned.len() > 1, "{lengths:?} planned as {planned:?}");
        let per_row: Vec<Range<usize>> = (0..n).map(|r| r..r + 1).collect();
        for plan in [planned, per_row, vec![0..2, 2..n]] {
            // Padded to the longest row, and to a multiple of 16 (the CPU's grids).
            for align in [1, 16] {
                let grouped = hidden_states(&encoder, &rows, &plan, align);
                assert_eq!(grouped.size(), one_grid.size());
                let diff = max_difference(&grouped, &one_grid);
                assert!(
                    diff < 1e-5,
                    "{lengths:?} in groups {plan:?} aligned to {align}: differs by {diff}"
                );
            }
        }
    }
}

#[test]
fn packed_batches_on_the_cpu_group_rows_of_similar_length() {
    let rows = rows(&[4, 4, 5, 60]);
    let ids: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let batch = PackedBatch::new(&ids, Device::Cpu).unwrap();
    let shapes: Vec<(i64, i64, i64, i64)> = batch
        .groups
        .iter()
        .map(|g| (g.first_token, g.tokens, g.rows, g.padded_len))
        .collect();
    // The 60-token row would pad the three short ones to 64: 4 x 64^2 against 3 x 16^2 +
    // 64^2; each grid is a multiple of 16 long.
    assert_eq!(shapes, [(0, 13, 3, 16), (13, 60, 1, 64)]);
}

#[test]
fn bf16_on_the_cpu_packs_the_linear_weights_and_gives_the_fp32_hidden_states() {
    let _no_grad = tch::no_grad_guard();
    let fp32 = random_encoder_in(Kind::Float);
    let bf16 = random_encoder_in(Kind::BFloat16);
    let layer = &bf16.layers[0];
    assert!(
        [
            &layer.qkv,
            &layer.attention_out,
            &layer.intermediate,
            &layer.output
        ]
        .iter()
        .all(|l| l.packed),
        "bf16 on the CPU runs oneDNN's packed product"
    );
    let rows = rows(&[3, 9, 30, 31]);
    let plan = plan_attention_groups(&[3, 9, 30, 31], CPU_GROUP_COST, 16);
    let expected = hidden_states(&fp32, &rows, &plan, 16);
    let packed = hidden_states(&bf16, &rows, &plan, 16).to_kind(Kind::Float);
    let cosine = (&packed * &expected).sum_dim_intlist(-1, false, Kind::Float)
        / (packed.norm_scalaropt_dim(2, [-1], false) * expected.norm_scalaropt_dim(2, [-1], false));
    let worst = cosine.min().double_value(&[]);
    assert!(worst > 0.999, "worst token cosine to fp32: {worst}");
}

#[test]
fn fp32_packed_for_onednn_gives_the_plain_hidden_states() {
    let _no_grad = tch::no_grad_guard();
    let plain = random_encoder_with(Kind::Float, false);
    let packed = random_encoder_with(Kind::Float, true);
    let linears = |e: &BertEncoder| -> Vec<bool> {
        e.layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.attention_out, &l.intermediate, &l.output])
            .map(|l| l.packed)
            .collect()
    };
    assert!(linears(&plain).iter().all(|p| !p), "plain stays plain");
    assert!(
        linears(&packed).iter().all(|p| *p),
        "every fp32 layer packed"
    );
    // 73 tokens: the packed products run on 96 rows (the rows of zeros are cut off again).
    let lengths = [3, 9, 30, 31];
    let rows = rows(&lengths);
    let plan = plan_attention_groups(&lengths, CPU_GROUP_COST, 16);
    let expected = hidden_states(&plain, &rows, &plan, 16);
    let got = hidden_states(&packed, &rows, &plan, 16);
    assert_eq!(got.size(), expected.size());
    let off = max_difference(&got, &expected);
    assert!(off < 1e-4, "packed fp32 differs from plain by {off}");
}
