//! The embedding engine of kb-worker (tokenizer, BERT encoder on libtorch, pooling, batcher).
