//! The tantivy side of `bench lexical-engines`: an in-RAM index with our analyzer as its
//! tokenizer (or tantivy's default one), built, sized and searched.

use super::super::round3;
use crate::index::lexical::{Analyzer, Role, PART_WEIGHT};
use serde_json::json;
use std::collections::HashMap;
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::directory::RamDirectory;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED,
};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use tantivy::{
    Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term,
};

pub(super) const K: usize = 10;
pub(super) const TEXT: &str = "text";
pub(super) const ROW: &str = "row";
pub(super) const OUR_TOKENIZER: &str = "kb_standard";

/// A tantivy tokenizer that emits our analyzer's terms (roles are a query-side matter:
/// documents index every term alike).
#[derive(Clone)]
pub(super) struct OurTokenizer {
    pub(super) analyzer: Analyzer,
    pub(super) tokens: Vec<Token>,
}

pub(super) struct OurTokenStream<'a> {
    tokens: &'a [Token],
    /// One past the current token (0: before the first).
    next: usize,
}

impl Tokenizer for OurTokenizer {
    type TokenStream<'a> = OurTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> OurTokenStream<'a> {
        let mut n = 0;
        let tokens = &mut self.tokens;
        self.analyzer.terms(text, |term| {
            if n == tokens.len() {
                tokens.push(Token::default());
            }
            let token = &mut tokens[n];
            token.text.clear();
            token.text.push_str(term);
            token.position = n;
            token.offset_from = 0;
            token.offset_to = 0;
            token.position_length = 1;
            n += 1;
        });
        OurTokenStream {
            tokens: &self.tokens[..n],
            next: 0,
        }
    }
}

impl TokenStream for OurTokenStream<'_> {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        unreachable!("the token stream of our analyzer is read only")
    }
}

/// How queries become tantivy term weights.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tokens {
    /// Our analyzer: identifiers' parts weigh [`PART_WEIGHT`].
    Ours,
    /// Tantivy's `default` tokenizer: every token weighs 1.
    Default,
}

/// A built tantivy index and what searching it needs.
pub(super) struct Tantivy {
    index: Index,
    directory: RamDirectory,
    _reader: IndexReader,
    searcher: Searcher,
    text: Field,
    tokens: Tokens,
    /// Row of each document, per segment.
    rows: Vec<Column<u64>>,
}

impl Tantivy {
    /// Indexes `texts` (row = position). `commit_every` 0: one commit, then one segment
    /// (merged if the writer made several); N: a commit after every N rows, as a live
    /// index would to make writes visible, and tantivy's own merges, waited for.
    pub(super) fn build(
        texts: &[&str],
        tokens: Tokens,
        writer_mib: usize,
        commit_every: usize,
    ) -> tantivy::Result<Self> {
        let mut schema = Schema::builder();
        let tokenizer = match tokens {
            Tokens::Ours => OUR_TOKENIZER,
            Tokens::Default => "default",
        };
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(IndexRecordOption::WithFreqs);
        let text =
            schema.add_text_field(TEXT, TextOptions::default().set_indexing_options(indexing));
        let row = schema.add_u64_field(ROW, INDEXED | FAST);
        let directory = RamDirectory::create();
        // What `Index::create_in_ram` does, keeping the directory to read its size.
        let index = Index::create(directory.clone(), schema.build(), IndexSettings::default())?;
        index.tokenizers().register(
            OUR_TOKENIZER,
            OurTokenizer {
                analyzer: Analyzer::Standard,
                tokens: Vec::new(),
            },
        );
        let mut writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, writer_mib << 20)?;
        for (r, t) in texts.iter().enumerate() {
            let mut doc = TantivyDocument::default();
            doc.add_text(text, t);
            doc.add_u64(row, r as u64);
            writer.add_document(doc)?;
            if commit_every > 0 && (r + 1) % commit_every == 0 {
                writer.commit()?;
            }
        }
        writer.commit()?;
        let segments = index.searchable_segment_ids()?;
        if commit_every == 0 && segments.len() > 1 {
            writer.merge(&segments).wait()?;
        }
        writer.garbage_collect_files().wait()?;
        writer.wait_merging_threads()?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let searcher = reader.searcher();
        let rows = searcher
            .segment_readers()
            .iter()
            .map(|s| s.fast_fields().u64(ROW))
            .collect::<tantivy::Result<_>>()?;
        Ok(Self {
            index,
            directory,
            _reader: reader,
            searcher,
            text,
            tokens,
            rows,
        })
    }

    /// The query's terms with their weights.
    fn weights(&self, text: &str) -> tantivy::Result<HashMap<String, f32>> {
        let mut weights: HashMap<String, f32> = HashMap::new();
        match self.tokens {
            Tokens::Ours => Analyzer::Standard.terms_with_roles(text, |term, role| {
                let weight = match role {
                    Role::Part => PART_WEIGHT,
                    Role::Word | Role::Whole => 1.0,
                };
                *weights.entry(term.to_string()).or_default() += weight;
            }),
            Tokens::Default => {
                let mut analyzer = self.index.tokenizer_for_field(self.text)?;
                let mut stream = analyzer.token_stream(text);
                while let Some(token) = stream.next() {
                    *weights.entry(token.text.clone()).or_default() += 1.0;
                }
            }
        }
        Ok(weights)
    }

    pub(super) fn search(&self, text: &str) -> tantivy::Result<Vec<usize>> {
        let clauses: Vec<(Occur, Box<dyn Query>)> = self
            .weights(text)?
            .into_iter()
            .map(|(term, weight)| {
                let term = TermQuery::new(
                    Term::from_field_text(self.text, &term),
                    IndexRecordOption::WithFreqs,
                );
                let query: Box<dyn Query> = Box::new(BoostQuery::new(Box::new(term), weight));
                (Occur::Should, query)
            })
            .collect();
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        let hits = self.searcher.search(
            &BooleanQuery::new(clauses),
            &TopDocs::with_limit(K).order_by_score(),
        )?;
        Ok(hits
            .into_iter()
            .filter_map(|(_, address)| {
                self.rows[address.segment_ord as usize]
                    .first(address.doc_id)
                    .map(|r| r as usize)
            })
            .collect())
    }

    pub(super) fn memory(&self) -> tantivy::Result<serde_json::Value> {
        let usage = self.searcher.space_usage()?;
        let sum = |f: &dyn Fn(&tantivy::space_usage::SegmentSpaceUsage) -> u64| -> u64 {
            usage.segments().iter().map(f).sum()
        };
        Ok(json!({
            "ram_directory_mib": mib(self.directory.total_mem_usage() as u64),
            "segments": usage.segments().len(),
            "segments_mib": mib(usage.total().get_bytes()),
            "postings_mib": mib(sum(&|s| s.postings().total().get_bytes())),
            "termdict_mib": mib(sum(&|s| s.termdict().total().get_bytes())),
            "fieldnorms_mib": mib(sum(&|s| s.fieldnorms().total().get_bytes())),
            "row_fast_field_mib": mib(sum(&|s| s.fast_fields().total().get_bytes())),
        }))
    }
}

pub(super) fn mib(bytes: u64) -> f64 {
    round3(bytes as f64 / 1048576.0)
}
