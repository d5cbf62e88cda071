//! What the index knows besides the collections' rows: where each collection's vectors
//! come from ([`Binding`]), the aliases that name collections, and the re-index jobs
//! under way. All are changed only by log records, so every replica holds the same
//! catalog at the same sequence, and all travel in snapshots.

use super::IndexError;
use crate::log::{Binding, Op, ReindexJob};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bindings and aliases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Collection → where its vectors come from. A collection without an entry was
    /// created before bindings existed (or by an older record) and is adopted by the first
    /// model that binds it.
    pub bindings: BTreeMap<String, Binding>,
    /// Alias → collection.
    pub aliases: BTreeMap<String, String>,
    /// Re-index jobs under way, by target collection. Encoded after the bindings and
    /// aliases, and only when there are some ([`Catalog::to_bytes`]).
    #[serde(skip)]
    pub jobs: BTreeMap<String, ReindexJob>,
}

impl Catalog {
    /// Whether the catalog holds nothing (snapshots of such an index keep the older
    /// format, which older workers read).
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty() && self.aliases.is_empty() && self.jobs.is_empty()
    }

    /// The snapshot encoding: bindings and aliases (what the first version of the catalog
    /// held), then the jobs when there are any. A catalog without jobs encodes as that
    /// first version did, and a reader of it ignores what follows.
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut bytes = postcard::to_allocvec(self)?;
        if !self.jobs.is_empty() {
            bytes.extend(postcard::to_allocvec(&self.jobs)?);
        }
        Ok(bytes)
    }

    /// Reads [`Catalog::to_bytes`]'s encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Catalog, postcard::Error> {
        let (mut catalog, rest): (Catalog, _) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            catalog.jobs = postcard::from_bytes(rest)?;
        }
        Ok(catalog)
    }

    /// The job that re-indexes `collection` (as its source), if any.
    pub fn job_of_source(&self, collection: &str) -> Option<&ReindexJob> {
        self.jobs.values().find(|j| j.source == collection)
    }

    /// Refuses to change `collection` by hand while a re-index reads or writes it.
    fn check_not_in_job(&self, collection: &str, change: &str) -> Result<(), IndexError> {
        if let Some(job) = self.jobs.get(collection) {
            return Err(IndexError::NameTaken(format!(
                "{collection:?} is being re-indexed from {:?}: cannot {change} it until the job \
                 ends (cancel it with DELETE /v1/jobs/{collection})",
                job.source
            )));
        }
        if let Some(job) = self.job_of_source(collection) {
            return Err(IndexError::NameTaken(format!(
                "{collection:?} is being re-indexed into {:?}: cannot {change} it until the \
                 job ends (cancel it with DELETE /v1/jobs/{})",
                job.target, job.target
            )));
        }
        Ok(())
    }

    /// The collection `name` designates: the alias's target, or `name` itself.
    pub fn resolve<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, String::as_str)
    }

    /// Checks a catalog op against the catalog and the collections (`exists`).
    pub fn check(&self, op: &Op, exists: &dyn Fn(&str) -> bool) -> Result<(), IndexError> {
        match op {
            Op::CreateCollection { collection, .. } if self.aliases.contains_key(collection) => {
                Err(IndexError::NameTaken(format!(
                    "{collection:?} is an alias (of {:?}); delete the alias first or choose \
                     another name",
                    self.aliases[collection]
                )))
            }
            Op::BindCollection {
                collection,
                binding,
            } => {
                if !exists(collection) {
                    return Err(IndexError::NoSuchCollection(collection.clone()));
                }
                self.check_binding(collection, binding)
            }
            Op::SetAlias { alias, collection } => {
                if exists(alias) {
                    return Err(IndexError::NameTaken(format!(
                        "{alias:?} is a collection; an alias needs a name of its own"
                    )));
                }
                if self.aliases.contains_key(collection) {
                    return Err(IndexError::NameTaken(format!(
                        "{collection:?} is an alias itself; point {alias:?} at a collection"
                    )));
                }
                if !exists(collection) {
                    return Err(IndexError::NoSuchCollection(collection.clone()));
                }
                if self.jobs.contains_key(collection) {
                    return Err(IndexError::NameTaken(format!(
                        "{collection:?} is being re-indexed; point {alias:?} at {:?}, which \
                         takes the name {collection:?} stands for when the job ends",
                        self.jobs[collection].source
                    )));
                }
                Ok(())
            }
            Op::DropCollection { collection } => self.check_not_in_job(collection, "drop"),
            Op::StartReindex { job } => self.check_start(job, exists),
            Op::FinishReindex { target } | Op::CancelReindex { target }
                if !self.jobs.contains_key(target) =>
            {
                Err(IndexError::NoSuchCollection(format!(
                    "no re-index job into {target:?}"
                )))
            }
            _ => Ok(()),
        }
    }

    fn check_start(
        &self,
        job: &ReindexJob,
        exists: &dyn Fn(&str) -> bool,
    ) -> Result<(), IndexError> {
        let (source, target) = (&job.source, &job.target);
        if !exists(source) {
            return Err(IndexError::NoSuchCollection(source.clone()));
        }
        if self.bindings.get(source) == Some(&Binding::External) {
            return Err(IndexError::NameTaken(format!(
                "{source:?} holds vectors sent by clients: there are no model vectors to \
                 re-index"
            )));
        }
        if !matches!(job.binding, Binding::Model(_)) {
            return Err(IndexError::NameTaken(
                "a re-index embeds with a model; it cannot make a collection of client \
                 vectors"
                    .into(),
            ));
        }
        self.check_not_in_job(source, "re-index")?;
        if exists(target) || self.aliases.contains_key(target) || self.jobs.contains_key(target) {
            return Err(IndexError::NameTaken(format!(
                "{target:?} is taken (a collection or an alias): the re-index needs a new \
                 name for its target"
            )));
        }
        Ok(())
    }

    /// A binding of `collection` agrees with the one it has, if any.
    pub fn check_binding(&self, collection: &str, binding: &Binding) -> Result<(), IndexError> {
        match self.bindings.get(collection) {
            Some(stored) if !same(stored, binding) => Err(IndexError::ModelMismatch {
                collection: collection.to_string(),
                stored: stored.describe(),
                given: binding.describe(),
            }),
            _ => Ok(()),
        }
    }

    /// Applies a catalog op; `exists` says which collections there are after it.
    pub fn apply(&mut self, op: &Op, exists: &dyn Fn(&str) -> bool) -> Result<(), IndexError> {
        match op {
            Op::BindCollection {
                collection,
                binding,
            } => {
                self.check(op, exists)?;
                self.bindings
                    .entry(collection.clone())
                    .or_insert_with(|| binding.clone());
            }
            Op::SetAlias { alias, collection } => {
                self.check(op, exists)?;
                self.aliases.insert(alias.clone(), collection.clone());
            }
            Op::DeleteAlias { alias } => {
                self.aliases.remove(alias);
            }
            Op::DropCollection { collection } => {
                self.bindings.remove(collection);
                // Records logged before a job started, or by an older build, may still
                // drop a collection of a job: the job ends with it.
                self.jobs
                    .retain(|target, job| target != collection && job.source != *collection);
            }
            Op::StartReindex { job } => {
                self.check(op, exists)?;
                self.bindings
                    .insert(job.target.clone(), job.binding.clone());
                self.jobs.insert(job.target.clone(), job.clone());
            }
            Op::CancelReindex { target } if self.jobs.remove(target).is_some() => {
                self.bindings.remove(target);
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends the job into `target` once its documents match the source's (checked by the
    /// caller, [`super::Index`], which also dropped the source's rows): the source's name
    /// becomes an alias of `target` and its aliases follow.
    pub fn finish(&mut self, target: &str) {
        let Some(job) = self.jobs.remove(target) else {
            return;
        };
        self.bindings.remove(&job.source);
        for to in self.aliases.values_mut() {
            if *to == job.source {
                target.clone_into(to);
            }
        }
        self.aliases.insert(job.source, target.to_string());
    }

    /// The aliases that point at `collection`.
    pub fn aliases_of(&self, collection: &str) -> Vec<String> {
        aliases_of(&self.aliases, collection)
    }
}

/// The aliases of `aliases` (alias → collection) that point at `collection`.
pub fn aliases_of(aliases: &BTreeMap<String, String>, collection: &str) -> Vec<String> {
    aliases
        .iter()
        .filter(|(_, target)| *target == collection)
        .map(|(alias, _)| alias.clone())
        .collect()
}

/// Whether two bindings agree: both external, or models with the same vectors.
pub fn same(a: &Binding, b: &Binding) -> bool {
    match (a, b) {
        (Binding::External, Binding::External) => true,
        (Binding::Model(x), Binding::Model(y)) => x.same_vectors(y),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
