//! `kb-worker query TEXT`: one semantic search against a collection.

use super::client::{collection_path, ApiClient, ServerArgs};
use anyhow::Context;
use serde::Deserialize;

/// Characters of a hit's text shown on its line.
const PREVIEW_CHARS: usize = 100;

/// Arguments of `kb-worker query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The question or text to search for.
    pub text: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Collection to search.
    #[arg(long)]
    pub collection: String,
    /// Number of hits.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Metadata filter as JSON, e.g. '{"ext":"md"}', '{"ext":{"$in":["md","txt"]}}' or
    /// '{"year":{"$gte":2020,"$lt":2024},"$or":[{"team":"search"},{"draft":{"$ne":true}}]}'
    /// (operators: $eq $ne $in $nin $gt $gte $lt $lte $exists $not $and $or; see
    /// docs/worker.md, "Filters").
    #[arg(long)]
    pub filter: Option<String>,
    /// `dense` (embeddings), `lexical` (BM25 over the chunk texts) or `hybrid` (both,
    /// fused); see docs/worker.md, "Query modes".
    #[arg(long, default_value = "dense", value_parser = ["dense", "lexical", "hybrid"])]
    pub mode: String,
    /// Print the worker's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Deserialize)]
struct QueryResponse {
    hits: Vec<QueryHit>,
}

#[derive(Debug, Deserialize)]
struct QueryHit {
    document_id: String,
    score: f32,
    #[serde(default)]
    text: Option<String>,
}

/// Runs `kb-worker query`.
pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let mut body = serde_json::json!({
        "query": args.text,
        "top_k": args.top_k,
        "include_text": true,
        "mode": args.mode,
    });
    if let Some(filter) = &args.filter {
        body["filter"] = parse_filter(filter)?;
    }
    let client = ApiClient::new(&args.server)?;
    let path = collection_path(&args.collection, "/query");
    let answer: serde_json::Value = client.post_json(&path, &body).await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let response: QueryResponse =
        serde_json::from_value(answer).context("the worker's answer has no hits list")?;
    print!("{}", format_hits(&response.hits));
    Ok(())
}

fn parse_filter(text: &str) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(text).context("--filter must be valid JSON")?;
    anyhow::ensure!(
        value.is_object(),
        "--filter must be a JSON object of metadata keys"
    );
    Ok(value)
}

/// One line per hit: rank, score, document id, first line of the chunk.
fn format_hits(hits: &[QueryHit]) -> String {
    if hits.is_empty() {
        return "no hits\n".into();
    }
    hits.iter()
        .enumerate()
        .map(|(i, hit)| {
            let preview = hit.text.as_deref().map(first_line).unwrap_or_default();
            format!(
                "{:>2}. {:.4}  {}  {}\n",
                i + 1,
                hit.score,
                hit.document_id,
                preview
            )
        })
        .collect()
}

/// The first non-blank line, trimmed and cut at [`PREVIEW_CHARS`] characters.
fn first_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let line = line.unwrap_or_default();
    if line.chars().count() <= PREVIEW_CHARS {
        return line.to_string();
    }
    let cut: String = line.chars().take(PREVIEW_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_print_rank_score_id_and_first_line() {
        let hits = vec![
            QueryHit {
                document_id: "chunking.md".into(),
                score: 0.8123,
                text: Some("\n  ## Chunking  \nbody".into()),
            },
            QueryHit {
                document_id: "auth.md".into(),
                score: 0.5,
                text: None,
            },
        ];
        assert_eq!(
            format_hits(&hits),
            " 1. 0.8123  chunking.md  ## Chunking\n 2. 0.5000  auth.md  \n"
        );
        assert_eq!(format_hits(&[]), "no hits\n");
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let line = "é".repeat(150);
        let shown = first_line(&line);
        assert_eq!(shown.chars().count(), PREVIEW_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn filter_must_be_a_json_object() {
        assert!(parse_filter(r#"{"ext":{"$in":["md"]}}"#).is_ok());
        assert!(parse_filter(r#"{"year":{"$gte":2020},"$or":[{"a":1}]}"#).is_ok());
        assert!(parse_filter("[1]").is_err());
        assert!(parse_filter("ext=md").is_err());
    }
}
