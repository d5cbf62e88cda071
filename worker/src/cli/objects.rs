//! Backups in S3-compatible object storage (AWS S3, MinIO, Ceph, GCS interoperability).
//!
//! Layout under `s3://BUCKET/PREFIX/`, one folder per backup:
//!
//! ```text
//! backup-<sequence>-<unix time>/snapshot.kbsnap   the snapshot file, byte for byte
//! backup-<sequence>-<unix time>/manifest.json     written last: a folder without one is
//!                                                 an incomplete backup and never restored
//! ```
//!
//! The snapshot streams from the worker into a multipart upload (8 MiB parts, at most four
//! in flight), so a backup larger than memory never sits in memory; its format, CRC32 and
//! sequence are verified on the way ([`snapshot::StreamCheck`]) and a bad stream aborts the
//! upload. The manifest records the sequence (for replicated knowledge bases, the Redis
//! stream sequence the backup covers), size and SHA-256, which a restore verifies before it
//! installs anything. Credentials, region and endpoint come from the standard AWS variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).

use super::client::ApiClient;
use crate::log::Seq;
use crate::snapshot;
use anyhow::{bail, Context};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Multipart part size (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once; with `PART_SIZE`, bounds the memory a backup needs.
const PARTS_IN_FLIGHT: usize = 4;
const SNAPSHOT_OBJECT: &str = "snapshot.kbsnap";
const MANIFEST_OBJECT: &str = "manifest.json";

/// `s3://BUCKET/PREFIX` split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl S3Url {
    /// `None` when `url` is not an `s3://` URL.
    pub fn parse(url: &str) -> Option<anyhow::Result<S3Url>> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(anyhow::anyhow!(
                "{url}: no bucket; write s3://BUCKET/PREFIX"
            )));
        }
        Some(Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        }))
    }

    fn object(&self, parts: &[&str]) -> ObjectPath {
        let mut all: Vec<&str> = Vec::new();
        if !self.prefix.is_empty() {
            all.push(&self.prefix);
        }
        all.extend_from_slice(parts);
        ObjectPath::from(all.join("/"))
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Server-side encryption of uploaded objects.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Encryption {
    /// Server-side encryption: `AES256` (SSE-S3), `aws:kms` or `aws:kms:dsse` (default:
    /// the bucket's own setting, or `AWS_SERVER_SIDE_ENCRYPTION`).
    #[arg(long, value_parser = ["AES256", "aws:kms", "aws:kms:dsse"])]
    pub sse: Option<String>,
    /// KMS key for `--sse aws:kms` (or `AWS_SSE_KMS_KEY_ID`).
    #[arg(long)]
    pub sse_kms_key_id: Option<String>,
}

/// What `manifest.json` records about one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// The log sequence the snapshot covers; in replicated mode the Redis stream sequence,
    /// from which a knowledge base restored from it continues its (fresh) stream.
    pub sequence: Seq,
    pub bytes: u64,
    pub sha256: String,
    pub created_unix: u64,
    /// Snapshot file format (`KBSNAP02`).
    pub snapshot_format: String,
    /// The worker the snapshot came from.
    pub source: String,
    pub kb_worker_version: String,
}

/// Connects to the bucket of `url` with the AWS variables of the environment.
pub fn connect(url: &S3Url, encryption: &Encryption) -> anyhow::Result<AmazonS3> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
    if endpoint.is_ok_and(|e| e.starts_with("http://")) {
        // A plain-HTTP endpoint (MinIO in the cluster) is an explicit choice.
        builder = builder.with_allow_http(true);
    }
    if let Some(sse) = &encryption.sse {
        builder = builder.with_config("aws_server_side_encryption".parse()?, sse);
    }
    if let Some(key) = &encryption.sse_kms_key_id {
        builder = builder.with_config("aws_sse_kms_key_id".parse()?, key);
    }
    builder
        .build()
        .context("configuring S3 access from the AWS_* environment variables")
}

/// Streams a fresh snapshot of the worker behind `client` into `url` and writes its
/// manifest; then keeps the newest `keep` complete backups.
pub async fn backup(
    client: &ApiClient,
    source: &str,
    url: &S3Url,
    keep: u32,
    encryption: &Encryption,
) -> anyhow::Result<Manifest> {
    let store = connect(url, encryption)?;
    let response = client
        .get_response("/v1/admin/snapshot")
        .await
        .context("requesting a snapshot")?;
    let announced: Option<Seq> = response
        .headers()
        .get("x-kb-sequence")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let created_unix = unix_now();
    let name = backup_name(announced.unwrap_or(0), created_unix);
    let location = url.object(&[&name, SNAPSHOT_OBJECT]);
    let upload = store
        .put_multipart(&location)
        .await
        .with_context(|| format!("starting the upload of {location}"))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut check = snapshot::StreamCheck::default();
    let mut body = response.bytes_stream();
    let streamed = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("downloading the snapshot")?;
            check.update(&chunk);
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            writer.put(chunk);
        }
        anyhow::Ok(())
    }
    .await;
    let checked = streamed.and_then(|()| {
        check
            .finish()
            .map_err(|e| anyhow::anyhow!("the downloaded snapshot is invalid: {e}"))
    });
    let checked = match checked {
        Ok(checked) => checked,
        Err(e) => {
            // No half-uploaded parts are left to bill for.
            let _ = writer.abort().await;
            return Err(e);
        }
    };
    if announced.is_some_and(|a| a != checked.sequence) {
        let _ = writer.abort().await;
        bail!(
            "the worker announced sequence {announced:?} but the snapshot holds {}",
            checked.sequence
        );
    }
    writer
        .finish()
        .await
        .with_context(|| format!("completing the upload of {location}"))?;
    let manifest = Manifest {
        name: name.clone(),
        sequence: checked.sequence,
        bytes: checked.bytes,
        sha256: checked.sha256,
        created_unix,
        snapshot_format: checked.format,
        source: source.to_string(),
        kb_worker_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let manifest_path = url.object(&[&name, MANIFEST_OBJECT]);
    store
        .put(
            &manifest_path,
            PutPayload::from(serde_json::to_vec_pretty(&manifest)?),
        )
        .await
        .with_context(|| format!("writing {manifest_path}"))?;
    apply_retention(&store, url, keep).await?;
    Ok(manifest)
}

/// Complete backups under `url`, newest first (by time taken, then sequence).
pub async fn list(store: &AmazonS3, url: &S3Url) -> anyhow::Result<Vec<Manifest>> {
    let prefix = (!url.prefix.is_empty()).then(|| ObjectPath::from(url.prefix.as_str()));
    let mut objects = store.list(prefix.as_ref());
    let mut manifests = Vec::new();
    while let Some(meta) = objects.next().await {
        let meta = meta.with_context(|| format!("listing {url}"))?;
        if meta.location.filename() != Some(MANIFEST_OBJECT) {
            continue;
        }
        let bytes = store.get(&meta.location).await?.bytes().await?;
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) => manifests.push(m),
            Err(e) => eprintln!("skipping {}: unreadable manifest ({e})", meta.location),
        }
    }
    manifests.sort_by_key(|m| std::cmp::Reverse((m.created_unix, m.sequence)));
    Ok(manifests)
}

/// Deletes all but the newest `keep` complete backups (manifest first, so a backup is
/// never listed without its snapshot), and snapshot objects of failed runs older than the
/// newest complete backup.
async fn apply_retention(store: &AmazonS3, url: &S3Url, keep: u32) -> anyhow::Result<()> {
    let backups = list(store, url).await?;
    for old in backups.iter().skip(keep as usize) {
        for object in [MANIFEST_OBJECT, SNAPSHOT_OBJECT] {
            let path = url.object(&[&old.name, object]);
            store
                .delete(&path)
                .await
                .with_context(|| format!("deleting expired backup object {path}"))?;
        }
    }
    let Some(newest) = backups.first() else {
        return Ok(());
    };
    let complete: std::collections::HashSet<&str> =
        backups.iter().map(|m| m.name.as_str()).collect();
    let prefix = (!url.prefix.is_empty()).then(|| ObjectPath::from(url.prefix.as_str()));
    let mut objects = store.list(prefix.as_ref());
    while let Some(meta) = objects.next().await {
        let meta = meta?;
        let parts: Vec<_> = meta.location.parts().collect();
        let Some(folder) = parts.len().checked_sub(2).map(|i| parts[i].as_ref()) else {
            continue;
        };
        let orphan = parse_backup_name(folder).is_some_and(|(_, created)| {
            created < newest.created_unix && !complete.contains(folder)
        });
        if orphan {
            store.delete(&meta.location).await?;
        }
    }
    Ok(())
}

/// Downloads backup `name` (or the newest complete one) from `url` into `dir` as a
/// snapshot file, verifying size, SHA-256 and the snapshot itself; returns the manifest
/// and the file. Nothing is left in `dir` when a check fails.
pub async fn download(
    url: &S3Url,
    name: Option<&str>,
    dir: &Path,
) -> anyhow::Result<(Manifest, PathBuf)> {
    let store = connect(url, &Encryption::default())?;
    let backups = list(&store, url).await?;
    let chosen = match name {
        Some(name) => backups.iter().find(|m| m.name == name).with_context(|| {
            format!(
                "no complete backup named {name} under {url} (`kb-worker backups list --from {url}`)"
            )
        })?,
        None => backups
            .first()
            .with_context(|| format!("no complete backups (with a manifest) under {url}"))?,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".download.tmp-{}", std::process::id()));
    let result = fetch_verified(&store, url, chosen, &tmp).await;
    let path = result.and_then(|()| {
        let sequence = snapshot::verify_file(&tmp)?;
        if sequence != chosen.sequence {
            bail!(
                "backup {}: the snapshot holds sequence {}, its manifest says {}",
                chosen.name,
                sequence,
                chosen.sequence
            );
        }
        let path = dir.join(snapshot::file_name(chosen.sequence));
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
        Ok(path)
    });
    match path {
        Ok(path) => Ok((chosen.clone(), path)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

async fn fetch_verified(
    store: &AmazonS3,
    url: &S3Url,
    manifest: &Manifest,
    to: &Path,
) -> anyhow::Result<()> {
    let location = url.object(&[&manifest.name, SNAPSHOT_OBJECT]);
    let mut file =
        std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut sha = sha2::Sha256::new();
    let mut bytes = 0u64;
    let mut stream = store
        .get(&location)
        .await
        .with_context(|| format!("reading {location}"))?
        .into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {location}"))?;
        sha.update(&chunk);
        bytes += chunk.len() as u64;
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    let sha256 = hex::encode(sha.finalize());
    if bytes != manifest.bytes || sha256 != manifest.sha256 {
        bail!(
            "backup {} is corrupt: its snapshot object has {bytes} bytes with SHA-256 {sha256}, \
             the manifest records {} bytes with SHA-256 {}; nothing was restored. Pick an \
             older backup with --from {url}/NAME (`kb-worker backups list --from {url}`)",
            manifest.name,
            manifest.bytes,
            manifest.sha256
        );
    }
    Ok(())
}

/// `backup-<sequence>-<unix time>`: an S3 backup's folder, a directory backup's file stem.
pub(super) fn backup_name(sequence: Seq, created: u64) -> String {
    format!("backup-{sequence}-{created}")
}

/// The sequence and time in a [`backup_name`].
pub(super) fn parse_backup_name(name: &str) -> Option<(Seq, u64)> {
    let (sequence, created) = name.strip_prefix("backup-")?.split_once('-')?;
    Some((sequence.parse().ok()?, created.parse().ok()?))
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `s3://BUCKET/PREFIX/backup-...` names one backup; `s3://BUCKET/PREFIX` the newest.
pub fn split_backup_name(url: &S3Url) -> (S3Url, Option<String>) {
    let (parent, last) = url.prefix.rsplit_once('/').unwrap_or(("", &url.prefix));
    if parse_backup_name(last).is_some() {
        let parent = S3Url {
            bucket: url.bucket.clone(),
            prefix: parent.to_string(),
        };
        (parent, Some(last.to_string()))
    } else {
        (url.clone(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_prefix_and_backup_name() {
        let url = S3Url::parse("s3://kb-backups/prod/docs/").unwrap().unwrap();
        assert_eq!(url.bucket, "kb-backups");
        assert_eq!(url.prefix, "prod/docs");
        assert_eq!(
            url.object(&["backup-1-2", "manifest.json"]).as_ref(),
            "prod/docs/backup-1-2/manifest.json"
        );
        assert_eq!(split_backup_name(&url), (url.clone(), None));
        let named = S3Url::parse("s3://kb-backups/prod/docs/backup-42-1700000000")
            .unwrap()
            .unwrap();
        assert_eq!(
            split_backup_name(&named),
            (url, Some("backup-42-1700000000".to_string()))
        );
        let bare = S3Url::parse("s3://b").unwrap().unwrap();
        assert_eq!(bare.object(&["x"]).as_ref(), "x");
        assert!(S3Url::parse("s3:///x").unwrap().is_err());
        assert!(S3Url::parse("/var/backups").is_none());
    }
}
