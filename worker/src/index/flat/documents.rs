//! Reading documents back from a collection: one by id, a page in id order, or the ids
//! matching a metadata filter (for delete-by-filter).

use super::{FlatIndex, Row};
use crate::index::filter::Filter;
use std::ops::Bound;
use std::sync::Arc;

/// A stored document: its id and its chunks in chunk order (they share the metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub id: String,
    pub chunks: Vec<Arc<Row>>,
}

impl FlatIndex {
    /// The chunks of `doc_id`, if it is stored.
    pub fn document(&self, doc_id: &str) -> Option<StoredDocument> {
        self.docs.get(doc_id).map(|rows| self.stored(doc_id, rows))
    }

    /// Up to `limit` documents whose metadata matches `filter`, in id order, starting
    /// after `after` (the last id of the previous page).
    pub fn documents(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &Filter,
    ) -> Vec<StoredDocument> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.docs
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(id, rows)| self.stored(id, rows))
            .filter(|doc| {
                doc.chunks
                    .first()
                    .is_some_and(|c| filter.matches(&c.metadata))
            })
            .take(limit)
            .collect()
    }

    /// Ids of every document whose metadata matches `filter`, in id order.
    pub fn matching(&self, filter: &Filter) -> Vec<String> {
        self.docs
            .iter()
            .filter(|(_, rows)| {
                rows.first()
                    .and_then(|&r| self.rows[r].as_ref())
                    .is_some_and(|row| filter.matches(&row.metadata))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether `other` holds the same documents as `self`: the same ids, and for each the
    /// same chunks (ids, texts, metadata), vectors aside.
    pub fn same_documents(&self, other: &FlatIndex) -> bool {
        self.docs.len() == other.docs.len()
            && self.docs.iter().all(|(id, rows)| {
                other
                    .docs
                    .get(id)
                    .is_some_and(|theirs| self.same_rows(rows, other, theirs))
            })
    }

    /// How many of `self`'s documents `other` holds as they are (ids, chunks, metadata).
    pub fn matching_documents(&self, other: &FlatIndex) -> usize {
        self.docs
            .iter()
            .filter(|(id, rows)| {
                other
                    .docs
                    .get(*id)
                    .is_some_and(|theirs| self.same_rows(rows, other, theirs))
            })
            .count()
    }

    fn same_rows(&self, rows: &[usize], other: &FlatIndex, theirs: &[usize]) -> bool {
        rows.len() == theirs.len()
            && rows
                .iter()
                .zip(theirs)
                .all(|(&a, &b)| match (&self.rows[a], &other.rows[b]) {
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                })
    }

    /// What `target` needs to hold `self`'s documents, over at most `scan` documents of
    /// `self` in id order after `after`: the documents it lacks or holds with other chunks
    /// (at most `limit`), and the ids of its documents in that range that `self` lacks.
    pub fn differences(
        &self,
        target: &FlatIndex,
        after: Option<&str>,
        scan: usize,
        limit: usize,
    ) -> Differences {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Differences::default();
        let mut last = None;
        let range = self.docs.range::<str, _>((start, Bound::Unbounded));
        for (scanned, (id, rows)) in range.enumerate() {
            if scanned == scan || out.stale.len() == limit {
                out.next = last.map(str::to_string);
                break;
            }
            last = Some(id.as_str());
            match target.docs.get(id) {
                Some(theirs) if self.same_rows(rows, target, theirs) => out.matching += 1,
                _ => out.stale.push(self.stored(id, rows)),
            }
        }
        let end = out
            .next
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Included);
        out.extra = target
            .docs
            .range::<str, _>((start, end))
            .filter(|(id, _)| !self.docs.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        out
    }

    fn stored(&self, id: &str, rows: &[usize]) -> StoredDocument {
        StoredDocument {
            id: id.to_string(),
            chunks: rows.iter().filter_map(|&r| self.rows[r].clone()).collect(),
        }
    }
}

/// One step of a re-index ([`FlatIndex::differences`]).
#[derive(Debug, Default)]
pub struct Differences {
    /// Documents to embed again and write into the target.
    pub stale: Vec<StoredDocument>,
    /// Target documents to delete (gone from the source).
    pub extra: Vec<String>,
    /// Documents of the range the target already holds as they are.
    pub matching: usize,
    /// Where the next step starts (`None`: this step reached the last document).
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::index::filter::Filter;
    use crate::index::flat::FlatIndex;
    use crate::log::{ChunkRecord, Metric};
    use serde_json::json;

    fn collection() -> FlatIndex {
        let mut index = FlatIndex::new(2, Metric::Cosine, tch::Device::Cpu).unwrap();
        for (id, team, chunks) in [("b", "search", 2), ("a", "platform", 1), ("c", "search", 1)] {
            let chunks: Vec<ChunkRecord> = (0..chunks)
                .map(|i| ChunkRecord {
                    chunk_id: format!("{id}#{i}"),
                    text: format!("{id} part {i}"),
                    metadata: serde_json::from_value(json!({"team": team})).unwrap(),
                    vector: vec![1.0, i as f32],
                })
                .collect();
            index.upsert(id, &chunks).unwrap();
        }
        index
    }

    #[test]
    fn documents_come_back_whole_and_paged_in_id_order() {
        let index = collection();
        let b = index.document("b").unwrap();
        let texts: Vec<&str> = b.chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["b part 0", "b part 1"]);
        assert!(index.document("zz").is_none());
        let all = Filter::default();
        let ids =
            |docs: Vec<super::StoredDocument>| docs.into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(index.documents(None, 2, &all)), ["a", "b"]);
        assert_eq!(ids(index.documents(Some("b"), 2, &all)), ["c"]);
        let search = Filter::parse(&json!({"team": "search"})).unwrap();
        assert_eq!(ids(index.documents(None, 10, &search)), ["b", "c"]);
        assert_eq!(index.matching(&search), ["b", "c"]);
    }
}
