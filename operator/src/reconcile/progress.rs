//! The re-index progress of a model change, read from the workers that run it: each worker
//! of the new model answers `GET` [`kb_config::progress::JOBS_PATH`] on its metrics port
//! (the NetworkPolicy lets the operator's pods in). The answers feed
//! `status.modelRollout.documentsDone/documentsTotal/estimatedFinish`; a worker that does
//! not answer in time only leaves them out.

use super::build::METRICS_PORT;
use k8s_openapi::api::core::v1::Pod;
use kb_config::progress::{JobProgress, JobsProgress};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// How the operator reaches the workers' metrics ports.
#[derive(Clone, Debug)]
pub struct WorkerProbe {
    http: reqwest::Client,
    /// The metrics port (tests point it at a local server).
    pub port: u16,
}

impl Default for WorkerProbe {
    fn default() -> Self {
        Self::new(METRICS_PORT as u16, Duration::from_secs(2))
    }
}

/// What the workers of the new model report about the jobs they know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReindexProgress {
    pub documents_done: u64,
    pub documents_total: u64,
    /// Seconds until the slowest job ends, when every unfinished job has an ETA.
    pub eta_seconds: Option<f64>,
}

/// A model change's re-index figures as one reconcile sees them.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ReindexSeen {
    /// No figures: no change, no job reported, or a worker of the new model serves (the
    /// re-index is over, nobody is asked).
    #[default]
    None,
    /// The previous status's figures are younger than the refresh interval: kept, and the
    /// workers were not asked.
    Kept,
    /// What the new model's workers answered.
    Reported(ReindexProgress),
}

impl WorkerProbe {
    pub fn new(port: u16, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("an HTTP client without TLS builds");
        Self { http, port }
    }

    /// The progress of the jobs that `pods` (with an IP) report, asked at once; `None`
    /// when none answered with a job.
    pub async fn reindex(&self, pods: &[&Pod]) -> Option<ReindexProgress> {
        let asks = pods.iter().filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.clone()?;
            let host = match ip.contains(':') {
                true => format!("[{ip}]"),
                false => ip,
            };
            let url = format!(
                "http://{host}:{}{}",
                self.port,
                kb_config::progress::JOBS_PATH
            );
            let name = pod.name_any();
            Some(async move {
                let answer = async { self.http.get(&url).send().await?.error_for_status() };
                match answer.await {
                    Ok(resp) => resp.json::<JobsProgress>().await.ok(),
                    Err(error) => {
                        tracing::debug!(pod = %name, %error, "no re-index progress");
                        None
                    }
                }
            })
        });
        let answers = futures::future::join_all(asks).await;
        combine(answers.into_iter().flatten().flat_map(|a| a.jobs))
    }
}

/// One figure per job (the answer with an ETA, from the worker that runs it, wins), then
/// summed over the jobs.
fn combine(jobs: impl Iterator<Item = JobProgress>) -> Option<ReindexProgress> {
    let mut by_id: BTreeMap<String, JobProgress> = BTreeMap::new();
    for job in jobs {
        let keep = by_id
            .get(&job.id)
            .is_some_and(|seen| seen.eta_seconds.is_some() || job.eta_seconds.is_none());
        if !keep {
            by_id.insert(job.id.clone(), job);
        }
    }
    if by_id.is_empty() {
        return None;
    }
    let unfinished = by_id
        .values()
        .filter(|j| j.documents_done < j.documents_total);
    let eta_seconds = unfinished
        .map(|j| j.eta_seconds)
        .try_fold(0f64, |slowest, eta| eta.map(|e| slowest.max(e)));
    Some(ReindexProgress {
        documents_done: by_id.values().map(|j| j.documents_done).sum(),
        documents_total: by_id.values().map(|j| j.documents_total).sum(),
        eta_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, done: u64, total: u64, eta: Option<f64>) -> JobProgress {
        JobProgress {
            id: id.into(),
            documents_total: total,
            documents_done: done,
            eta_seconds: eta,
        }
    }

    #[test]
    fn jobs_are_counted_once_with_the_runners_eta_and_the_slowest_sets_the_finish() {
        let answers = vec![
            // The runner of `a` and another replica that only sees it.
            job("a-1", 10, 100, None),
            job("a-1", 12, 100, Some(30.0)),
            job("a-1", 11, 100, None),
            job("b-1", 5, 50, Some(90.0)),
        ];
        let progress = combine(answers.into_iter()).unwrap();
        assert_eq!(
            progress,
            ReindexProgress {
                documents_done: 17,
                documents_total: 150,
                eta_seconds: Some(90.0),
            }
        );
    }

    #[test]
    fn no_eta_while_an_unfinished_job_has_none_and_nothing_without_jobs() {
        let answers = vec![job("a", 1, 100, Some(30.0)), job("b", 0, 40, None)];
        assert_eq!(combine(answers.into_iter()).unwrap().eta_seconds, None);
        // A job whose target holds everything (about to swap) needs no ETA.
        let answers = vec![job("a", 1, 100, Some(30.0)), job("b", 40, 40, None)];
        assert_eq!(
            combine(answers.into_iter()).unwrap().eta_seconds,
            Some(30.0)
        );
        assert_eq!(combine(std::iter::empty()), None);
    }
}
