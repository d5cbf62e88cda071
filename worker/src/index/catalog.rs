//! What the index knows besides the collections' rows: where each collection's vectors
//! come from ([`Binding`]) and the aliases that name collections. Both are changed only by
//! log records, so every replica holds the same catalog at the same sequence, and both
//! travel in snapshots.

use super::IndexError;
use crate::log::{Binding, Op};
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
}

impl Catalog {
    /// Whether the catalog holds nothing (snapshots of such an index keep the older
    /// format, which older workers read).
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty() && self.aliases.is_empty()
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
                Ok(())
            }
            _ => Ok(()),
        }
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
            }
            _ => {}
        }
        Ok(())
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
