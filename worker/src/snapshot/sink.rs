//! Where a snapshot payload goes as it is read: an index being built, or nothing (a
//! check of the structure only).

use super::SnapshotError;
use crate::index::catalog::Catalog;
use crate::index::flat::{Builder, FlatIndex, Row};
use crate::index::{Index, Placement};
use crate::log::{Metric, Seq};
use std::sync::Arc;

/// What a payload's contents go to as they are read.
pub(super) trait Sink {
    /// The bindings and aliases (payload version 3; before the collections).
    fn catalog(&mut self, _catalog: Catalog) -> Result<(), SnapshotError> {
        Ok(())
    }
    /// A collection of `rows` rows starts.
    fn collection(
        &mut self,
        name: String,
        dim: usize,
        metric: Metric,
        rows: usize,
    ) -> Result<(), SnapshotError>;
    /// The next rows of the current collection, with their row-major vectors.
    fn rows(&mut self, rows: Vec<Arc<Row>>, vectors: &[f32]) -> Result<(), SnapshotError>;
}

/// Builds an [`Index`] on a placement from what is read.
pub(super) struct IndexSink {
    placement: Placement,
    index: Index,
    catalog: Catalog,
    current: Option<(String, Builder)>,
}

impl IndexSink {
    pub(super) fn new(placement: Placement) -> Self {
        Self {
            index: Index::new(placement.clone()),
            catalog: Catalog::default(),
            placement,
            current: None,
        }
    }

    fn close(&mut self) -> Result<(), SnapshotError> {
        if let Some((name, builder)) = self.current.take() {
            self.index.insert(name, builder.finish()?);
        }
        Ok(())
    }

    /// The index, at sequence `seq`.
    pub(super) fn finish(mut self, seq: Seq) -> Result<Index, SnapshotError> {
        self.close()?;
        self.index.set_applied(seq);
        self.index.set_catalog(self.catalog);
        Ok(self.index)
    }
}

impl Sink for IndexSink {
    fn catalog(&mut self, catalog: Catalog) -> Result<(), SnapshotError> {
        self.catalog = catalog;
        Ok(())
    }

    fn collection(
        &mut self,
        name: String,
        dim: usize,
        metric: Metric,
        rows: usize,
    ) -> Result<(), SnapshotError> {
        self.close()?;
        let kind = crate::index::flat::storage_kind(self.placement.primary());
        let builder = FlatIndex::builder(dim, metric, self.placement.clone(), kind, rows)?;
        self.current = Some((name, builder));
        Ok(())
    }

    fn rows(&mut self, rows: Vec<Arc<Row>>, vectors: &[f32]) -> Result<(), SnapshotError> {
        match self.current.as_mut() {
            Some((_, builder)) => Ok(builder.push(rows, vectors)?),
            None => Ok(()),
        }
    }
}

/// Reads nothing into memory: checks the payload's structure only.
#[derive(Default)]
pub(super) struct CheckSink;

impl Sink for CheckSink {
    fn collection(
        &mut self,
        _: String,
        _: usize,
        _: Metric,
        _: usize,
    ) -> Result<(), SnapshotError> {
        Ok(())
    }

    fn rows(&mut self, _: Vec<Arc<Row>>, _: &[f32]) -> Result<(), SnapshotError> {
        Ok(())
    }
}
