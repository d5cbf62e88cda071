//! Exact top-k search over a collection's shards.
//!
//! - Tombstones are masked on the device with each shard's incrementally updated mask: a
//!   query without a metadata filter does no work proportional to the collection on the
//!   host. (A metadata filter still evaluates the host-side metadata.)
//! - The score matrix is computed in tiles of rows, each reduced to its top-k before the
//!   next, so memory stays bounded (`TILE_SCORES` scores) for any number of queries; a
//!   tile's top-k goes through group maxima first ([`super::select`]).
//! - With fp16 storage (CUDA), the winners are re-scored in fp32, so returned scores are
//!   exact dot products, not fp16-rounded ones.

use super::{normalize, FlatIndex, Hit};
use crate::index::filter::Filter;
use crate::index::IndexError;
use crate::log::Metric;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Scores computed at once per shard: 32M (128 MiB in fp32).
const TILE_SCORES: usize = 1 << 25;

/// Rows whose metadata a filtered search evaluates between two looks at its cancellation.
const CHECK_EVERY_ROWS: usize = 16_384;

fn stop_if(cancelled: &dyn Fn() -> bool) -> Result<(), IndexError> {
    match cancelled() {
        true => Err(IndexError::Aborted(
            "the search was cancelled: every caller waiting for it has gone (deadline)".into(),
        )),
        false => Ok(()),
    }
}

/// Rows per tile for `queries` queries.
fn tile_rows(queries: usize) -> usize {
    (TILE_SCORES / queries.max(1)).max(1024)
}

/// One shard's candidates: per query, `k` (score, shard-local row) pairs.
struct Candidates {
    shard: usize,
    k: usize,
    values: Tensor,
    indices: Tensor,
}

impl FlatIndex {
    /// The `k` best live rows for each query that pass `filter`, best first.
    pub fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        self.search_in_tiles(queries, k, filter, tile_rows(queries.len()), &|| false)
    }

    /// [`FlatIndex::search`] that gives up ([`IndexError::Aborted`]) once `cancelled`
    /// says so, checked between tiles and every few thousand filtered rows: a search
    /// whose callers are gone (their deadline passed) stops using the CPU and stops
    /// holding the index read lock that writers wait for.
    pub fn search_cancellable(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: &Filter,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        self.search_in_tiles(queries, k, filter, tile_rows(queries.len()), cancelled)
    }

    /// [`FlatIndex::search_cancellable`] with tiles of `tile_rows` rows.
    pub(crate) fn search_in_tiles(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: &Filter,
        tile_rows: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        if let Some(bad) = queries.iter().find(|q| q.len() != self.dim) {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: bad.len(),
            });
        }
        let total = self.rows.len();
        // Only a metadata filter (or a failed mask update) needs the host to look at rows.
        let on_host = !filter.is_empty() || (self.dead > 0 && !self.masks_ok);
        let allowed: Option<Vec<bool>> = match on_host {
            false => None,
            true => {
                let mut allowed = Vec::with_capacity(total);
                for rows in self.rows.chunks(CHECK_EVERY_ROWS) {
                    stop_if(cancelled)?;
                    allowed.extend(
                        rows.iter()
                            .map(|r| r.as_ref().is_some_and(|r| filter.matches(&r.metadata))),
                    );
                }
                Some(allowed)
            }
        };
        let candidates = allowed
            .as_ref()
            .map_or(total - self.dead, |a| a.iter().filter(|x| **x).count());
        let k = k.min(candidates);
        if k == 0 || queries.is_empty() {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let mut q = Tensor::f_from_slice(&flat)?.f_view([queries.len() as i64, self.dim as i64])?;
        if self.metric == Metric::Cosine {
            q = normalize(&q)?;
        }
        // Launch every shard's work before reading any back, so that the devices work at
        // the same time.
        let mut launched = Vec::with_capacity(self.shards.len());
        for s in 0..self.shards.len() {
            let shard =
                self.shard_candidates(s, &q, k, allowed.as_deref(), tile_rows, cancelled)?;
            if let Some(c) = shard {
                launched.push(c);
            }
        }
        self.merge(queries.len(), k, launched)
    }

    /// The top-`k` candidates of shard `s` for the (normalised) queries `q`, or `None`
    /// when the shard has no eligible row.
    fn shard_candidates(
        &self,
        s: usize,
        q: &Tensor,
        k: usize,
        allowed: Option<&[bool]>,
        tile_rows: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Candidates>, IndexError> {
        let n = self.shards.len();
        let shard = &self.shards[s];
        let len = self.shard_len(s, self.rows.len());
        // Rows to exclude, as a device bool tensor (true: excluded), and how many remain.
        let (excluded, eligible) = match allowed {
            Some(a) => {
                let keep: Vec<bool> = a.iter().skip(s).step_by(n).copied().collect();
                let eligible = keep.iter().filter(|&&b| b).count();
                let out: Vec<u8> = keep.iter().map(|&b| u8::from(!b)).collect();
                let mask = Tensor::f_from_slice(&out)?
                    .f_to_device(shard.device)?
                    .f_to_kind(Kind::Bool)?;
                (Some(mask), eligible)
            }
            None => match &shard.dead {
                Some(dead) if shard.dead_count > 0 => (
                    Some(dead.0.f_narrow(0, 0, len as i64)?),
                    len - shard.dead_count,
                ),
                _ => (None, len),
            },
        };
        let k_s = eligible.min(k);
        if k_s == 0 {
            return Ok(None);
        }
        // The queries cross to the device once: a second copy from pageable host memory
        // (for the fp32 re-scoring) would wait for the tile kernels queued before it.
        let q32 = q.f_to_device(shard.device)?;
        let qd = q32.f_to_kind(self.kind)?;
        // A screened CPU shard scores batches through its bf16 copy first.
        let screen = match &shard.screen {
            Some(screen) if q.size()[0] >= super::screen::MIN_QUERIES as i64 => {
                let per_norm = super::screen::margin(self.dim, 1.0, shard.max_norm);
                let margins = q32
                    .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), false)?
                    .f_mul_scalar(per_norm)?;
                Some((&screen.0, q32.f_to_kind(Kind::BFloat16)?, margins))
            }
            _ => None,
        };
        let mut values = Vec::new();
        let mut indices = Vec::new();
        let tile = tile_rows.max(1);
        for start in (0..len).step_by(tile) {
            stop_if(cancelled)?;
            let rows = tile.min(len - start);
            let (at, count) = (start as i64, rows as i64);
            let db = shard.vectors.0.f_narrow(0, at, count)?;
            let ex = match &excluded {
                Some(ex) => Some(ex.f_narrow(0, at, count)?),
                None => None,
            };
            let k_tile = k_s.min(rows) as i64;
            let (v, i) = match &screen {
                Some((screen, qb, margins)) => super::screen::Tile {
                    screen: &screen.f_narrow(0, at, count)?,
                    vectors: &db,
                    excluded: ex.as_ref(),
                }
                .topk(&q32, qb, margins, k_tile)?,
                None => {
                    let mut scores = qd.f_matmul(&db.f_tr()?)?;
                    if let Some(ex) = &ex {
                        scores = scores.f_masked_fill(ex, f64::NEG_INFINITY)?;
                    }
                    super::select::topk(&scores, k_tile)?
                }
            };
            values.push(v);
            indices.push(if start == 0 { i } else { i.f_add_scalar(at)? });
        }
        let (values, indices) = if values.len() == 1 {
            (values.remove(0), indices.remove(0))
        } else {
            // Every tile's winners, then the winners among them.
            let all_v = Tensor::f_cat(&values, 1)?;
            let all_i = Tensor::f_cat(&indices, 1)?;
            let (v, pos) = all_v.f_topk(k_s as i64, 1, true, true)?;
            (v, all_i.f_gather(1, &pos, false)?)
        };
        let values = if self.kind == Kind::Float {
            values
        } else {
            self.rescore_fp32(s, &q32, &indices)?
        };
        Ok(Some(Candidates {
            shard: s,
            k: k_s,
            values,
            indices,
        }))
    }

    /// Exact fp32 dot products of each query (`q`: fp32, on the shard's device) with its
    /// candidate rows of shard `s`.
    fn rescore_fp32(&self, s: usize, q: &Tensor, indices: &Tensor) -> Result<Tensor, IndexError> {
        let shard = &self.shards[s];
        let (queries, k) = (indices.size()[0], indices.size()[1]);
        let rows = shard
            .vectors
            .0
            .f_index_select(0, &indices.f_flatten(0, -1)?)?
            .f_to_kind(Kind::Float)?
            .f_view([queries, k, self.dim as i64])?;
        let q = q.f_unsqueeze(1)?;
        Ok(rows.f_mul(&q)?.f_sum_dim_intlist(-1, false, Kind::Float)?)
    }

    /// Merges the shards' candidates on the host: best first, ties in row order.
    fn merge(
        &self,
        queries: usize,
        k: usize,
        launched: Vec<Candidates>,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let n = self.shards.len();
        let mut merged: Vec<Vec<(f32, usize)>> = vec![Vec::new(); queries];
        for c in launched {
            let values: Vec<f32> = Vec::<f32>::try_from(
                c.values
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?
                    .f_flatten(0, -1)?,
            )?;
            let indices: Vec<i64> =
                Vec::<i64>::try_from(c.indices.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
            for (qi, (vals, idxs)) in values.chunks(c.k).zip(indices.chunks(c.k)).enumerate() {
                merged[qi].extend(
                    vals.iter()
                        .zip(idxs)
                        .map(|(&v, &local)| (v, local as usize * n + c.shard)),
                );
            }
        }
        Ok(merged
            .into_iter()
            .map(|mut cands| {
                // Best first; equal scores in row order, as a single device returns them.
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                cands
                    .into_iter()
                    .filter(|(score, _)| score.is_finite())
                    .take(k)
                    .filter_map(|(score, i)| {
                        let row = self.rows[i].as_ref()?;
                        Some(Hit {
                            row: Arc::clone(row),
                            score,
                        })
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::index::filter::Filter;
    use crate::index::flat::FlatIndex;
    use crate::log::{ChunkRecord, Metric};
    use tch::{Device, Kind};

    fn chunk(id: usize, vector: Vec<f32>) -> ChunkRecord {
        ChunkRecord {
            chunk_id: format!("c{id}"),
            text: format!("row {id}"),
            metadata: Default::default(),
            vector,
        }
    }

    /// 300 rows of 8 pseudo-random dimensions on two CPU shards, every third deleted.
    fn collection(kind: Kind) -> FlatIndex {
        let mut index =
            FlatIndex::with_kind(8, Metric::Dot, vec![Device::Cpu, Device::Cpu], kind).unwrap();
        let mut x = 7u64;
        for id in 0..300 {
            let v: Vec<f32> = (0..8)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect();
            index.upsert(&format!("d{id}"), &[chunk(id, v)]).unwrap();
        }
        for id in (0..300).step_by(3) {
            index.delete(&format!("d{id}"));
        }
        index
    }

    fn ids(hits: &[super::Hit]) -> Vec<String> {
        hits.iter().map(|h| h.row.doc_id.clone()).collect()
    }

    #[test]
    fn tiles_and_device_masks_give_what_one_untiled_host_masked_search_gives() {
        let index = collection(Kind::Float);
        assert!(index.dead > 64 || index.shards.iter().all(|s| s.dead.is_some()));
        let queries = vec![
            vec![1.0, -0.5, 0.25, 0.0, 0.5, -1.0, 0.3, 0.1],
            vec![0.2; 8],
        ];
        let whole = index
            .search_in_tiles(&queries, 10, &Filter::default(), usize::MAX, &|| false)
            .unwrap();
        let tiled = index
            .search_in_tiles(&queries, 10, &Filter::default(), 7, &|| false)
            .unwrap();
        for (a, b) in whole.iter().zip(&tiled) {
            assert_eq!(ids(a), ids(b));
            assert!(a
                .iter()
                .all(|h| h.row.doc_id[1..].parse::<usize>().unwrap() % 3 != 0));
        }
        // The host path (as after a failed mask update) agrees with the device masks.
        let mut host = collection(Kind::Float);
        host.masks_ok = false;
        let by_host = host.search(&queries, 10, &Filter::default()).unwrap();
        for (a, b) in whole.iter().zip(&by_host) {
            assert_eq!(ids(a), ids(b));
        }
    }

    #[test]
    fn fp16_storage_returns_exact_fp32_scores() {
        let index = collection(Kind::Half);
        let query = vec![0.9, -0.3, 0.7, 0.1, -0.2, 0.4, 0.05, -0.6];
        let hits = index
            .search(std::slice::from_ref(&query), 5, &Filter::default())
            .unwrap();
        assert_eq!(hits[0].len(), 5);
        for hit in &hits[0] {
            // The stored (fp16-rounded) vector, dotted with the query in f64.
            let stored = index.document(&hit.row.doc_id).unwrap();
            let row = index.docs[&stored.id][0];
            let (s, j) = (row % 2, row / 2);
            let v: Vec<f32> =
                Vec::try_from(index.shards[s].vectors.0.get(j as i64).to_kind(Kind::Float))
                    .unwrap();
            let exact: f64 = v
                .iter()
                .zip(&query)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!(
                (f64::from(hit.score) - exact).abs() < 1e-5,
                "score {} vs exact {exact}",
                hit.score
            );
        }
    }
}
