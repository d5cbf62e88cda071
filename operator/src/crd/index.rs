//! How the workers' exact index searches.

use serde::{Deserialize, Serialize};

/// Search settings of the workers' exact index.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// How CPU workers score batches of 4 or more queries: `none` (one fp32 matrix
    /// product) or `bf16` (a bf16 copy of the vectors screens candidates that are scored
    /// again in fp32: the same results, faster on CPUs with AMX-BF16 or AVX512-BF16, and
    /// half the vectors' memory again; size `resources.requests.memory` for it). Workers
    /// on GPUs store fp16 vectors and ignore it.
    #[serde(default)]
    pub cpu_screen: CpuScreen,
    /// The lexical (BM25) index each collection keeps next to its vectors, for `lexical`
    /// and `hybrid` queries: `standard` (lowercased words; code identifiers kept whole and
    /// split into their parts), `english` (also drops English stop words and stems), or
    /// `off` (those queries answer 400; saves the memory of the postings).
    #[serde(default)]
    pub lexical: Lexical,
}

/// See [`Index::lexical`].
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Lexical {
    Off,
    #[default]
    Standard,
    English,
}

/// See [`Index::cpu_screen`].
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CpuScreen {
    #[default]
    None,
    Bf16,
}
