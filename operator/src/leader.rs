//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run
//! and only one reconciles. Updates carry the Lease's resourceVersion, so two candidates
//! racing for it cannot both win.
//!
//! Expiry follows client-go's rules: a candidate never compares the holder's `renewTime`
//! with its own clock (clocks of two nodes differ); it notes *when it saw the record
//! change* on its own monotonic clock, and takes the Lease only once `leaseDurationSeconds`
//! passed since without a change. The holder stops leading when it could not renew within
//! two thirds of the duration (see `kb-operator run`), so it stops before anyone may take
//! over.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who competes for which Lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// How long a holder stays leader without renewing.
    pub duration: Duration,
}

/// One candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease record last seen (holder, renew time, transitions) and when, locally.
    observed: Mutex<Option<(Record, Instant)>>,
}

/// What identifies one renewal of the Lease.
type Record = (Option<String>, Option<MicroTime>, Option<i32>);

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
        }
    }

    /// Whether the holder of `spec` let it lapse: the record has not changed for a lease
    /// duration of this candidate's clock since it first saw it so.
    fn lapsed(&self, spec: &LeaseSpec) -> bool {
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.clone(),
            spec.lease_transitions,
        );
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let since = match observed.as_ref() {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let now = Instant::now();
                *observed = Some((record, now));
                now
            }
        };
        let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
        since.elapsed() >= Duration::from_secs(seconds)
    }

    /// Takes the Lease if it is free or expired, or renews it if held. Returns whether this
    /// candidate holds it afterwards; losing a race is `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&self) -> kube::Result<bool> {
        let now = jiff::Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0)),
            };
            return tolerate_conflict(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let mine = holder == self.config.identity;
        if !mine && !holder.is_empty() && !self.lapsed(&spec) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let mut next = self.spec(now, transitions);
        if mine {
            next.acquire_time = spec.acquire_time.or(next.acquire_time);
        }
        let updated = Lease {
            metadata: lease.metadata,
            spec: Some(next),
        };
        tolerate_conflict(
            self.api
                .replace(&self.config.name, &PostParams::default(), &updated)
                .await,
        )
    }

    /// Gives the Lease up (on shutdown) so a standby takes over without waiting for expiry.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }

    /// Period between renewals: a third of the lease, so two missed renewals still hold.
    pub fn renew_period(&self) -> Duration {
        self.config.duration / 3
    }

    fn spec(&self, now: jiff::Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

fn tolerate_conflict<T>(result: kube::Result<T>) -> kube::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
