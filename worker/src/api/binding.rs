//! Which collections this worker's model may embed for, and the names (aliases) that
//! stand for collections: the checks every handler makes before it embeds or writes.

use super::error::ApiError;
use super::{Engine, Wait};
use crate::index::IndexError;
use crate::log::{Binding, Op};
use crate::store::IndexView;

impl Engine {
    /// The collection `name` designates now: an alias's target, or `name` itself.
    pub fn resolve(&self, name: &str) -> String {
        self.store.view().resolve(name).to_string()
    }

    /// What this worker's model binds a collection to.
    pub fn binding(&self) -> Binding {
        Binding::Model(self.model.clone())
    }

    /// Whether `binding` names another model than this worker's (whose vectors it must
    /// not mix with its own).
    pub fn is_foreign(&self, binding: Option<&Binding>) -> bool {
        matches!(binding, Some(Binding::Model(m)) if !m.same_vectors(&self.model))
    }

    /// Refuses a client's write into the target of a re-index: the job writes it, from
    /// its source.
    pub fn check_writable(&self, collection: &str) -> Result<(), ApiError> {
        match self.store.view().jobs.get(collection) {
            Some(job) => Err(ApiError::Conflict(format!(
                "{collection:?} is being built by a re-index of {:?}: write to {:?}, whose \
                 writes the re-index copies",
                job.source, job.source
            ))),
            None => Ok(()),
        }
    }

    /// Whether this worker may embed texts for `collection`, bound to `binding` (a
    /// collection without a binding, or not created yet, takes this worker's model).
    pub fn check_embeds(
        &self,
        collection: &str,
        binding: Option<&Binding>,
    ) -> Result<(), ApiError> {
        match binding {
            Some(Binding::Model(m)) if self.is_foreign(binding) => Err(IndexError::ModelMismatch {
                collection: collection.to_string(),
                stored: m.describe(),
                given: self.model.describe(),
            }
            .into()),
            None | Some(Binding::Model(_)) => Ok(()),
            Some(Binding::External) => Err(ApiError::BadRequest(format!(
                "collection {collection:?} holds vectors sent by clients (created with \
                 \"vectors\": \"external\"): send a `vector` with each document and query, or \
                 query with \"mode\": \"lexical\""
            ))),
        }
    }

    /// The collections whose vectors come from another model, described. The target of a
    /// re-index (a collection under construction for the next model) is not counted: the
    /// workers of the current model serve its source meanwhile.
    pub fn mismatched(&self, view: &IndexView) -> Vec<String> {
        self.mismatched_except(view, |name| view.jobs.contains_key(name))
    }

    /// [`Engine::mismatched`], less the collections a job re-indexes for this worker's
    /// model (run by it or by a replica of the same model): they are being mended, so the
    /// worker must not stop over them.
    pub fn mismatched_unattended(&self, view: &IndexView) -> Vec<String> {
        self.mismatched_except(view, |name| self.mended(view, name))
    }

    /// Whether collection `name` is a re-index target, or the source of a job that
    /// re-indexes it for this worker's model, or needs nothing from this worker because the
    /// KnowledgeBase wants another model than its own (it is replaced; `reindex::wanted`).
    pub fn mended(&self, view: &IndexView, name: &str) -> bool {
        self.reindex.superseded().is_some()
            || view.jobs.contains_key(name)
            || view
                .jobs
                .values()
                .any(|job| job.source == name && !self.is_foreign(Some(&job.binding)))
    }

    fn mismatched_except(&self, view: &IndexView, skip: impl Fn(&str) -> bool) -> Vec<String> {
        view.collections
            .iter()
            .filter(|(name, _)| !skip(name))
            .filter_map(|(name, c)| match &c.binding {
                Some(Binding::Model(m)) if self.is_foreign(c.binding.as_ref()) => {
                    Some(format!("{name} ({})", m.describe()))
                }
                _ => None,
            })
            .collect()
    }

    /// Binds every collection that has no binding yet (data written before bindings
    /// existed) to this worker's model: the first model that opens the data adopts it.
    /// Returns the collections adopted.
    pub async fn adopt_unbound(&self) -> Result<Vec<String>, ApiError> {
        let unbound: Vec<String> = {
            let view = self.store.view();
            view.collections
                .iter()
                .filter(|(_, c)| c.binding.is_none())
                .map(|(name, _)| name.clone())
                .collect()
        };
        if unbound.is_empty() {
            return Ok(unbound);
        }
        let ops = unbound
            .iter()
            .map(|collection| Op::BindCollection {
                collection: collection.clone(),
                binding: self.binding(),
            })
            .collect();
        self.write(ops, Wait::Applied).await?;
        for collection in &unbound {
            tracing::warn!(
                collection,
                model = %self.model.describe(),
                "collection had no model recorded (written by an older version); adopted by \
                 this worker's model"
            );
        }
        Ok(unbound)
    }
}

#[cfg(test)]
mod tests;
