//! `kb-operator`: reconciles `KnowledgeBase` objects into running, secured worker fleets.
//!
//! Reconcile is a pipeline, one module per stage: `dereference -> validate -> build ->
//! apply -> update_status`. Only dereference, apply and status talk to the API server.
#![forbid(unsafe_code)]

pub mod controller;
pub mod crd;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod reconcile;

pub use error::{Error, Result};
