//! The backup CronJob: `kb-worker backup` against the client Service; and the on-demand
//! backup Job made from the same template.

use super::names::{Component, Names};
use super::secret::ADMIN_KEY;
use super::{pod, security, Child};
use crate::crd::{Backup, KnowledgeBaseSpec, S3Destination};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, SecretEnvSource,
    SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::Digest;
use std::collections::BTreeMap;

/// Mount point of a PVC backup destination.
pub const BACKUP_DIR: &str = "/backup";

/// Where the backup container writes its result line (a manifest): the operator reads it
/// from the pod's termination message.
pub const REPORT_FILE: &str = "/dev/termination-log";
/// Annotation of an on-demand backup Job: the request (the KnowledgeBase's
/// `knowledge.dev/backup-now` value) it was made for.
pub const REQUEST_ANNOTATION: &str = "knowledge.dev/backup-request";

pub(super) fn build(spec: &KnowledgeBaseSpec, names: &Names) -> Option<Child> {
    let backup = spec.backup.as_ref()?;
    Some(Child::CronJob(Box::new(CronJob {
        metadata: names.meta(names.backup(), Component::Backup),
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            suspend: Some(backup.suspend),
            concurrency_policy: Some("Forbid".to_string()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(names.labels(Component::Backup)),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(spec, backup, names)),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    })))
}

/// A one-off backup Job for `request` (the value of the `knowledge.dev/backup-now`
/// annotation): the CronJob's template under a name derived from the request, so asking
/// twice with the same value makes one Job. `None` without `spec.backup`.
pub fn on_demand(spec: &KnowledgeBaseSpec, names: &Names, request: &str) -> Option<Job> {
    let backup = spec.backup.as_ref()?;
    let digest = sha2::Sha256::digest(request.as_bytes());
    let suffix: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut metadata = names.meta(format!("{}-{suffix}", names.backup()), Component::Backup);
    metadata.annotations = Some(BTreeMap::from([(
        REQUEST_ANNOTATION.to_string(),
        request.to_string(),
    )]));
    let mut job = job_spec(spec, backup, names);
    // The CronJob's history limits do not cover Jobs it did not start: an on-demand Job
    // goes a day after it finished (its result is in status.backup by then).
    job.ttl_seconds_after_finished = Some(ON_DEMAND_TTL_SECONDS);
    Some(Job {
        metadata,
        spec: Some(job),
        ..Job::default()
    })
}

/// How long a finished on-demand backup Job (and its pod) is kept.
pub const ON_DEMAND_TTL_SECONDS: i32 = 86_400;

fn job_spec(spec: &KnowledgeBaseSpec, backup: &Backup, names: &Names) -> JobSpec {
    let pod = PodSpec {
        restart_policy: Some("OnFailure".to_string()),
        service_account_name: Some(names.worker()),
        automount_service_account_token: Some(false),
        security_context: Some(security::pod(security::RUN_AS_USER)),
        containers: vec![container(spec, backup, names)],
        volumes: Some(volumes(backup)),
        image_pull_secrets: pod::pull_secrets(spec),
        ..PodSpec::default()
    };
    JobSpec {
        backoff_limit: Some(2),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(names.labels(Component::Backup)),
                ..ObjectMeta::default()
            }),
            spec: Some(pod),
        },
        ..JobSpec::default()
    }
}

fn destination(backup: &Backup) -> String {
    match &backup.destination.s3 {
        Some(s3) => s3.url(),
        None => BACKUP_DIR.to_string(),
    }
}

fn container(spec: &KnowledgeBaseSpec, backup: &Backup, names: &Names) -> Container {
    let keys_secret = spec
        .auth
        .api_keys_secret_ref
        .clone()
        .unwrap_or_else(|| names.api_keys());
    let mut env = vec![EnvVar {
        name: "KB_API_KEY".to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: keys_secret,
                key: ADMIN_KEY.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    let s3 = backup.destination.s3.as_ref();
    if let Some(s3) = s3 {
        env.extend(s3_env(s3));
    }
    Container {
        name: "backup".to_string(),
        image: Some(spec.worker_image()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec![
            "kb-worker".to_string(),
            "backup".to_string(),
            "--url".to_string(),
            names.endpoint(),
            "--to".to_string(),
            destination(backup),
            "--keep".to_string(),
            backup.retention.to_string(),
            "--report".to_string(),
            REPORT_FILE.to_string(),
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        env: Some(env),
        env_from: s3.map(s3_credentials),
        security_context: Some(security::container()),
        volume_mounts: Some(mounts(backup)),
        ..Container::default()
    }
}

/// Region and endpoint of an S3 destination, as the AWS variables `kb-worker` reads.
pub(super) fn s3_env(s3: &S3Destination) -> Vec<EnvVar> {
    let value = |name: &str, value: &str| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    };
    let mut env = Vec::new();
    env.extend(s3.region.as_deref().map(|r| value("AWS_REGION", r)));
    env.extend(s3.endpoint.as_deref().map(|e| value("AWS_ENDPOINT_URL", e)));
    env
}

/// The credentials Secret of an S3 destination, as environment variables.
pub(super) fn s3_credentials(s3: &S3Destination) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: s3.credentials_secret_ref.clone(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

fn mounts(backup: &Backup) -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    };
    let mut mounts = vec![mount("tmp", "/tmp")];
    if backup.destination.pvc.is_some() {
        mounts.push(mount("backup", BACKUP_DIR));
    }
    mounts
}

fn volumes(backup: &Backup) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    if let Some(pvc) = &backup.destination.pvc {
        volumes.push(Volume {
            name: "backup".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
    }
    volumes
}
