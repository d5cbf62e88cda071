//! Text analysis for the lexical index: text in, terms out (the same for documents and
//! queries).
//!
//! A word is a run of letters, digits and `_`, joined across `.`, `-`, `:` and `/` when a
//! word character follows, so `os.path.join`, `kb-worker`, `std::sync::Arc` and
//! `charts/kb/values.yaml` stay one word. Every word yields its lowercased whole
//! (Unicode-aware) and, when it has several parts, each part: `snake_case` and dotted or
//! dashed words split at their joints, `camelCase` and `HTTPServer` at case changes. So a
//! query for `UpdateImageSetMetadata` finds that identifier exactly (a rare term: a high
//! IDF), and one for "image metadata" still finds it through its parts.
//!
//! The English analyzer also drops common English words and stems the rest (Snowball's
//! English stemmer: "indexing" and "indexes" are both "index"); identifiers' wholes are
//! kept as they are.

use rust_stemmers::{Algorithm, Stemmer};
use std::borrow::Cow;

/// Longest term kept, in bytes: longer words (hashes, base64) are split into their parts
/// only, or dropped.
pub const MAX_TERM_BYTES: usize = 64;

/// How text becomes terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Analyzer {
    /// Lowercased words and their parts; nothing dropped, nothing stemmed.
    Standard,
    /// [`Analyzer::Standard`] plus English stop words dropped and words stemmed.
    English,
}

/// Words too common in English to tell passages apart (the English analyzer drops them).
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with", "we", "you", "your", "can", "from", "has", "have",
    "its", "our", "so", "which", "when", "what", "how", "do", "does",
];

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_joint(c: char) -> bool {
    matches!(c, '.' | '-' | ':' | '/')
}

/// Where a term comes from in its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A word of one part.
    Word,
    /// The whole of a word of several parts (an identifier).
    Whole,
    /// A part of such a word.
    Part,
}

impl Analyzer {
    /// Calls `emit` with every term of `text`, in order (terms repeat as often as they
    /// occur).
    pub fn terms(&self, text: &str, mut emit: impl FnMut(&str)) {
        self.terms_with_roles(text, |term, _| emit(term));
    }

    /// [`Analyzer::terms`], telling each term's [`Role`].
    pub fn terms_with_roles(&self, text: &str, mut emit: impl FnMut(&str, Role)) {
        let stemmer = match self {
            Analyzer::English => Some(Stemmer::create(Algorithm::English)),
            Analyzer::Standard => None,
        };
        let mut emit_term = |term: &str, role: Role| {
            if term.is_empty() || term.len() > MAX_TERM_BYTES {
                return;
            }
            let lower = lowercase(term);
            match &stemmer {
                None => emit(&lower, role),
                Some(stemmer) => {
                    if STOP_WORDS.contains(&lower.as_ref()) {
                        return;
                    }
                    if role == Role::Whole || !lower.chars().all(char::is_alphabetic) {
                        emit(&lower, role);
                    } else {
                        emit(&stemmer.stem(&lower), role);
                    }
                }
            }
        };
        for word in words(text) {
            let parts = parts(word);
            if parts.len() <= 1 {
                emit_term(word, Role::Word);
            } else {
                emit_term(word, Role::Whole);
                for part in parts {
                    emit_term(part, Role::Part);
                }
            }
        }
    }

    /// Every term of `text`, in order.
    pub fn analyze(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.terms(text, |t| out.push(t.to_string()));
        out
    }
}

/// Lowercases without allocating when `s` has no uppercase letter.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_uppercase) {
        Cow::Owned(s.to_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The words of `text` (see the module docs), as slices of it.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(is_word_char)?;
        let tail = &rest[start..];
        let mut end = 0;
        let mut chars = tail.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if is_word_char(c) {
                end = i + c.len_utf8();
                continue;
            }
            if !is_joint(c) {
                break;
            }
            // A run of joints belongs to the word only when a word character follows it.
            let mut after = None;
            while let Some(&(j, d)) = chars.peek() {
                if is_joint(d) {
                    chars.next();
                    continue;
                }
                after = Some((j, d));
                break;
            }
            match after {
                Some((_, d)) if is_word_char(d) => continue,
                _ => break,
            }
        }
        let word = &tail[..end];
        rest = &tail[end..];
        Some(word)
    })
}

/// The parts of a word: split at joints and `_`, then at case changes (`camelCase`,
/// `HTTPServer`, `parseJSON`). Digits stay with the letters before them (`sha256`).
fn parts(word: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for segment in word.split(|c: char| is_joint(c) || c == '_') {
        if segment.is_empty() {
            continue;
        }
        let chars: Vec<(usize, char)> = segment.char_indices().collect();
        let mut start = 0;
        for w in 1..chars.len() {
            let (i, c) = chars[w];
            let prev = chars[w - 1].1;
            let next = chars.get(w + 1).map(|&(_, n)| n);
            let boundary = c.is_uppercase()
                && (prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next.is_some_and(char::is_lowercase)));
            if boundary {
                out.push(&segment[start..i]);
                start = i;
            }
        }
        out.push(&segment[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_stay_whole_and_also_split_into_parts() {
        let terms = Analyzer::Standard.analyze("Call UpdateImageSetMetadata, then before_script.");
        assert_eq!(
            terms,
            [
                "call",
                "updateimagesetmetadata",
                "update",
                "image",
                "set",
                "metadata",
                "then",
                "before_script",
                "before",
                "script"
            ]
        );
        assert_eq!(
            Analyzer::Standard.analyze("os.path.join(HTTPServer) parseJSON sha256"),
            [
                "os.path.join",
                "os",
                "path",
                "join",
                "httpserver",
                "http",
                "server",
                "parsejson",
                "parse",
                "json",
                "sha256"
            ]
        );
    }

    #[test]
    fn joints_belong_to_a_word_only_between_word_characters() {
        assert_eq!(
            Analyzer::Standard.analyze("end. -flag std::sync::Arc a/b kb-worker--"),
            [
                "end",
                "flag",
                "std::sync::arc",
                "std",
                "sync",
                "arc",
                "a/b",
                "a",
                "b",
                "kb-worker",
                "kb",
                "worker"
            ]
        );
    }

    #[test]
    fn lowercasing_is_unicode_aware() {
        assert_eq!(
            Analyzer::Standard.analyze("ÜBER Straße ΣΊΣΥΦΟΣ"),
            ["über", "straße", "σίσυφος"]
        );
    }

    #[test]
    fn the_english_analyzer_drops_stop_words_and_stems_words_but_not_identifiers() {
        assert_eq!(
            Analyzer::English.analyze("The indexes are indexing running_jobs"),
            ["index", "index", "running_jobs", "run", "job"]
        );
    }

    #[test]
    fn overlong_terms_are_dropped() {
        let blob = "x".repeat(MAX_TERM_BYTES + 1);
        assert!(Analyzer::Standard.analyze(&blob).is_empty());
        let joined = format!("{blob}_tail");
        assert_eq!(Analyzer::Standard.analyze(&joined), ["tail"]);
    }
}
