//! Real-cluster tests live in `tests/`; see README.md.
