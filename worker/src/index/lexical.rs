//! The lexical (BM25) index of one collection, kept next to its vectors.
//!
//! It is built from the chunk texts that the log already carries, as rows are added, and
//! rebuilt from them whenever the collection is (snapshot load, compaction), so it
//! replicates, snapshots, backs up and restores with the vectors without being stored
//! anywhere: the log stays the one source of truth.
//!
//! Postings are per term, in row order: `(row, term frequency)`. A removed row is marked
//! dead (length 0) and its terms' document frequencies drop at once, so scores count only
//! live rows; its postings stay until the collection compacts (the flat index rebuilds it
//! then) and are skipped meanwhile.
//!
//! Scoring is Okapi BM25 (k1 = 1.2, b = 0.75, IDF `ln(1 + (N - df + 0.5) / (df + 0.5))`),
//! the form Lucene and Elasticsearch use.

pub mod analyzer;

pub use analyzer::{Analyzer, Role};
use std::collections::HashMap;

const K1: f32 = 1.2;
const B: f32 = 0.75;

/// Weight of a query identifier's parts next to its whole (1): a query for
/// `get_object_attributes` wants that identifier first, and passages that merely mention
/// objects and attributes after it. Measured with `kb-worker bench retrieval` (see
/// docs/benchmarks.md).
pub const PART_WEIGHT: f32 = 0.1;

#[derive(Debug, Clone, Copy)]
struct Posting {
    row: u32,
    tf: u32,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct LexicalIndex {
    analyzer: Analyzer,
    ids: HashMap<Box<str>, u32>,
    postings: Vec<Vec<Posting>>,
    /// Live rows holding each term.
    df: Vec<u32>,
    /// Terms of each row (0: dead, or no term at all).
    lens: Vec<u32>,
    live: u32,
    total_len: u64,
    /// Weight of a query identifier's parts ([`PART_WEIGHT`] unless set).
    part_weight: f32,
}

/// A query analysed against one index: its known terms with their weights.
#[derive(Debug, Clone)]
pub struct LexicalQuery {
    /// (term id, IDF x occurrences in the query).
    terms: Vec<(u32, f32)>,
    /// The same weights by term text, for scoring a row's text directly.
    by_text: HashMap<String, f32>,
    avg_len: f32,
}

impl LexicalIndex {
    pub fn new(analyzer: Analyzer) -> Self {
        Self {
            analyzer,
            ids: HashMap::new(),
            postings: Vec::new(),
            df: Vec::new(),
            lens: Vec::new(),
            live: 0,
            total_len: 0,
            part_weight: PART_WEIGHT,
        }
    }

    /// Sets the weight of a query identifier's parts (benchmarks compare weights).
    pub fn set_part_weight(&mut self, weight: f32) {
        self.part_weight = weight;
    }

    /// Bytes the index holds on the heap, approximately (postings, term table, lengths).
    pub fn heap_bytes(&self) -> usize {
        let postings: usize = self
            .postings
            .iter()
            .map(|p| p.capacity() * std::mem::size_of::<Posting>() + 24)
            .sum();
        let terms: usize = self.ids.keys().map(|k| k.len() + 16 + 4 + 8).sum();
        postings + terms + self.df.capacity() * 4 + self.lens.capacity() * 4
    }

    pub fn analyzer(&self) -> Analyzer {
        self.analyzer
    }

    /// Term frequencies of `text`.
    fn frequencies(&self, text: &str) -> (HashMap<String, u32>, u32) {
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut len = 0u32;
        self.analyzer.terms(text, |t| {
            len += 1;
            match counts.get_mut(t) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(t.to_string(), 1);
                }
            }
        });
        (counts, len)
    }

    /// Indexes `text` as row `row`; rows arrive in increasing order (the flat index
    /// appends them).
    pub fn add(&mut self, row: usize, text: &str) {
        if self.lens.len() <= row {
            self.lens.resize(row + 1, 0);
        }
        let (counts, len) = self.frequencies(text);
        for (term, tf) in counts {
            let id = match self.ids.get(term.as_str()) {
                Some(&id) => id,
                None => {
                    let id = self.postings.len() as u32;
                    self.ids.insert(term.into_boxed_str(), id);
                    self.postings.push(Vec::new());
                    self.df.push(0);
                    id
                }
            };
            self.postings[id as usize].push(Posting {
                row: row as u32,
                tf,
            });
            self.df[id as usize] += 1;
        }
        self.lens[row] = len;
        self.live += 1;
        self.total_len += u64::from(len);
    }

    /// Marks row `row`, indexed with `text`, dead.
    pub fn remove(&mut self, row: usize, text: &str) {
        if row >= self.lens.len() {
            return;
        }
        let (counts, len) = self.frequencies(text);
        for term in counts.keys() {
            if let Some(&id) = self.ids.get(term.as_str()) {
                self.df[id as usize] = self.df[id as usize].saturating_sub(1);
            }
        }
        self.lens[row] = 0;
        self.live = self.live.saturating_sub(1);
        self.total_len = self.total_len.saturating_sub(u64::from(len));
    }

    /// Distinct terms indexed (live or not).
    pub fn terms(&self) -> usize {
        self.ids.len()
    }

    /// Analyses `text` as a query: terms no live row holds are left out; the parts of an
    /// identifier weigh [`PART_WEIGHT`].
    pub fn query(&self, text: &str) -> LexicalQuery {
        let n = self.live as f32;
        let mut weights: HashMap<u32, f32> = HashMap::new();
        let mut texts: HashMap<u32, String> = HashMap::new();
        self.analyzer.terms_with_roles(text, |t, role| {
            if let Some(&id) = self.ids.get(t) {
                let df = self.df[id as usize] as f32;
                if df > 0.0 {
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    let weight = match role {
                        Role::Part => self.part_weight,
                        Role::Word | Role::Whole => 1.0,
                    };
                    *weights.entry(id).or_default() += idf * weight;
                    texts.entry(id).or_insert_with(|| t.to_string());
                }
            }
        });
        let by_text = texts
            .into_iter()
            .map(|(id, text)| (text, weights[&id]))
            .collect();
        let mut terms: Vec<(u32, f32)> = weights.into_iter().collect();
        terms.sort_unstable_by_key(|&(id, _)| id);
        LexicalQuery {
            terms,
            by_text,
            avg_len: if self.live == 0 {
                1.0
            } else {
                (self.total_len as f32 / n).max(1.0)
            },
        }
    }

    fn term_score(tf: u32, len: u32, avg_len: f32) -> f32 {
        let tf = tf as f32;
        tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len as f32 / avg_len))
    }

    /// The `k` best live rows for `query` that `accept` takes, best first (ties: lower
    /// row first). Rows that match no query term are not returned.
    pub fn search(
        &self,
        query: &LexicalQuery,
        k: usize,
        accept: impl Fn(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        if query.terms.is_empty() || k == 0 {
            return Vec::new();
        }
        let mut scores = vec![0f32; self.lens.len()];
        let mut touched: Vec<u32> = Vec::new();
        for &(id, weight) in &query.terms {
            for p in &self.postings[id as usize] {
                let len = self.lens[p.row as usize];
                if len == 0 {
                    continue;
                }
                let slot = &mut scores[p.row as usize];
                if *slot == 0.0 {
                    touched.push(p.row);
                }
                *slot += weight * Self::term_score(p.tf, len, query.avg_len);
            }
        }
        let mut hits: Vec<(usize, f32)> = touched
            .into_iter()
            .map(|r| (r as usize, scores[r as usize]))
            .filter(|&(r, s)| s > 0.0 && accept(r))
            .collect();
        let by_score = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if hits.len() > k {
            hits.select_nth_unstable_by(k - 1, by_score);
            hits.truncate(k);
        }
        hits.sort_unstable_by(by_score);
        hits
    }

    /// The BM25 score of a row holding `text` for `query` (0 when no term matches), as
    /// [`LexicalIndex::search`] would give it.
    pub fn score_text(&self, query: &LexicalQuery, text: &str) -> f32 {
        if query.terms.is_empty() {
            return 0.0;
        }
        let (counts, len) = self.frequencies(text);
        counts
            .iter()
            .filter_map(|(term, &tf)| {
                let weight = *query.by_text.get(term)?;
                Some(weight * Self::term_score(tf, len, query.avg_len))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(texts: &[&str]) -> LexicalIndex {
        let mut index = LexicalIndex::new(Analyzer::Standard);
        for (row, text) in texts.iter().enumerate() {
            index.add(row, text);
        }
        index
    }

    #[test]
    fn scores_follow_bm25() {
        let texts = [
            "the quick brown fox",
            "the lazy dog",
            "the quick dog jumps high",
        ];
        let index = index(&texts);
        let query = index.query("quick dog");
        let hits = index.search(&query, 10, |_| true);
        // By hand: N = 3, avgdl = 4; idf(quick) = idf(dog) = ln(1 + 1.5/2.5).
        let idf = (1.0f32 + 1.5 / 2.5).ln();
        let part = |len: f32| 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * len / 4.0));
        let expected = [
            (2, idf * part(5.0) * 2.0),
            (1, idf * part(3.0)),
            (0, idf * part(4.0)),
        ];
        assert_eq!(hits.len(), 3);
        for ((row, score), (want_row, want)) in hits.iter().zip(expected) {
            assert_eq!(*row, want_row);
            assert!((score - want).abs() < 1e-5, "{score} vs {want}");
        }
        for (row, score) in hits {
            assert!((index.score_text(&query, texts[row]) - score).abs() < 1e-5);
        }
    }

    #[test]
    fn removed_rows_leave_the_results_and_the_statistics() {
        let mut index = index(&["alpha beta", "alpha gamma", "delta"]);
        let before = index.search(&index.query("alpha"), 10, |_| true);
        assert_eq!(before.len(), 2);
        index.remove(0, "alpha beta");
        let query = index.query("alpha");
        let after = index.search(&query, 10, |_| true);
        assert_eq!(after.iter().map(|h| h.0).collect::<Vec<_>>(), [1]);
        // The same scores as an index that never held row 0.
        let fresh = self::index(&["alpha gamma", "delta"]);
        let want = fresh.search(&fresh.query("alpha"), 10, |_| true);
        assert!((after[0].1 - want[0].1).abs() < 1e-6);
        assert!(index.search(&index.query("beta"), 10, |_| true).is_empty());
    }

    #[test]
    fn accept_and_k_cut_the_results_in_score_order() {
        let index = index(&["x", "x x", "x x x", "y"]);
        let query = index.query("x");
        let all = index.search(&query, 10, |_| true);
        assert_eq!(all.iter().map(|h| h.0).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(index.search(&query, 1, |_| true)[0].0, 2);
        let odd = index.search(&query, 10, |r| r % 2 == 1);
        assert_eq!(odd.iter().map(|h| h.0).collect::<Vec<_>>(), [1]);
        assert!(index
            .search(&index.query("nothing here"), 10, |_| true)
            .is_empty());
    }

    #[test]
    fn an_identifier_query_prefers_the_identifier_to_passages_of_its_parts() {
        let mut texts: Vec<String> = (0..200)
            .map(|i| match i % 10 {
                0 => format!("a passage about an object, number {i}, of a typical length"),
                _ => format!(
                    "filler passage {i} with more words, as long as the passages of a corpus"
                ),
            })
            .collect();
        texts.push("get object attributes".into());
        texts.push(
            "The client offers get_object_attributes among many other calls of a long list \
             that goes on and on about unrelated things"
                .into(),
        );
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut index = index(&refs);
        let hits = index.search(&index.query("get_object_attributes"), 2, |_| true);
        assert_eq!(hits[0].0, 201, "{hits:?}");
        // With the parts weighing as much as the whole, the passage of the parts wins.
        index.set_part_weight(1.0);
        let hits = index.search(&index.query("get_object_attributes"), 2, |_| true);
        assert_eq!(hits[0].0, 200, "{hits:?}");
    }

    #[test]
    fn a_rare_identifier_outranks_its_common_parts() {
        let mut texts: Vec<String> = (0..50)
            .map(|i| format!("update the image metadata of set {i}"))
            .collect();
        texts.push("UpdateImageSetMetadata is the call".into());
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let index = index(&refs);
        let hits = index.search(&index.query("UpdateImageSetMetadata"), 3, |_| true);
        assert_eq!(hits[0].0, 50);
    }
}
