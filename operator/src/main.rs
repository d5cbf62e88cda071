//! kb-operator: reconciles KnowledgeBase resources (in progress).
fn main() {}
