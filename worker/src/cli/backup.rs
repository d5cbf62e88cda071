//! `kb-worker backup` (ask a worker for a snapshot, keep the newest N in a directory or an
//! S3-compatible bucket), `kb-worker restore` (install a backup as the snapshot a stopped
//! worker starts from) and `kb-worker backups list`.
//!
//! In a directory, a backup file is a snapshot file byte for byte (see
//! [`crate::snapshot`]), named `backup-<sequence>-<unix time>.kbsnap`; both commands decode
//! the whole snapshot before writing anything, so a corrupt download or file is never kept
//! or installed. `s3://` targets are described in [`super::objects`].

use super::client::{ApiClient, ServerArgs};
use super::objects::{self, unix_now, Encryption, S3Url};
use crate::log::Seq;
use crate::snapshot;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

const SEQUENCE_HEADER: &str = "x-kb-sequence";
/// What a data directory holds that a restore would replace.
const DATA_SUBDIRS: [&str; 2] = ["wal", "snapshots"];

/// Arguments of `kb-worker backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from the
    /// standard AWS_* variables), to write the backup into.
    #[arg(long)]
    pub to: String,
    /// Backups kept in the directory or under the prefix; older ones are deleted.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,
    #[command(flatten)]
    pub encryption: Encryption,
    /// Also write the result line to this file (in Kubernetes `/dev/termination-log`, where
    /// the operator reads the backup's name, sequence and size for the KnowledgeBase status).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Arguments of `kb-worker backups list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Directory or `s3://BUCKET/PREFIX` holding backups.
    #[arg(long)]
    pub from: String,
}

/// Arguments of `kb-worker restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A backup file, a directory whose newest valid backup is used, or
    /// `s3://BUCKET/PREFIX[/BACKUP]` (the newest complete backup when BACKUP is absent).
    #[arg(long)]
    pub from: String,
    /// Data directory of the (stopped) worker to restore into.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Move existing wal/ and snapshots/ aside to DATA_DIR/replaced-<unix time>/ instead
    /// of refusing.
    #[arg(long, conflicts_with = "if_empty")]
    pub force: bool,
    /// Do nothing (exit 0) when the data directory already holds a log or snapshots: for
    /// init containers, which run on every start of a pod.
    #[arg(long)]
    pub if_empty: bool,
}

/// A backup file found in a directory.
#[derive(Debug, Clone, PartialEq)]
struct BackupFile {
    path: PathBuf,
    sequence: Seq,
    taken_at: u64,
}

/// Runs `kb-worker backup`.
pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.server)?;
    if let Some(url) = S3Url::parse(&args.to) {
        let manifest = objects::backup(
            &client,
            &args.server.url,
            &url?,
            args.keep,
            &args.encryption,
        )
        .await?;
        return report(&serde_json::to_value(&manifest)?, args.report.as_deref());
    }
    let dir = PathBuf::from(&args.to);
    let mut response = client
        .get_response("/v1/admin/snapshot")
        .await
        .context("downloading a snapshot")?;
    let announced = response
        .headers()
        .get(SEQUENCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Seq>().ok());
    // Streamed into the folder, verified before it is named: never held in memory.
    let mut incoming = snapshot::Incoming::create(&dir)?;
    while let Some(chunk) = response.chunk().await.context("downloading a snapshot")? {
        incoming.write(&chunk)?;
    }
    let taken_at = unix_now();
    let (checked, path) = incoming
        .finish(|c| backup_name(c.sequence, taken_at))
        .context("verifying the snapshot")?;
    let sequence = checked.sequence;
    // The snapshot is authoritative: a header read a moment later may be ahead.
    if let Some(announced) = announced.filter(|&a| a != sequence) {
        eprintln!("note: the worker announced sequence {announced}; the snapshot holds {sequence}");
    }
    for old in list_backups(&dir)?.iter().skip(args.keep as usize) {
        std::fs::remove_file(&old.path)
            .with_context(|| format!("cannot delete old backup {}", old.path.display()))?;
    }
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let line = serde_json::json!({"name": name, "file": path, "sequence": sequence, "bytes": checked.bytes});
    report(&line, args.report.as_deref())
}

/// Prints the result line, and writes it to `file` when given.
fn report(line: &serde_json::Value, file: Option<&Path>) -> anyhow::Result<()> {
    println!("{line}");
    if let Some(file) = file {
        std::fs::write(file, line.to_string())
            .with_context(|| format!("cannot write the report to {}", file.display()))?;
    }
    Ok(())
}

/// Runs `kb-worker restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    if args.if_empty && holds_data(&args.data_dir) {
        let line = serde_json::json!({
            "skipped": "the data directory already holds data",
            "data_dir": args.data_dir,
        });
        println!("{line}");
        return Ok(());
    }
    if let Some(url) = S3Url::parse(&args.from) {
        return restore_from_s3(&url?, &args).await;
    }
    let source = PathBuf::from(&args.from);
    let candidates = if source.is_dir() {
        list_backups(&source)?.into_iter().map(|b| b.path).collect()
    } else {
        vec![source.clone()]
    };
    if candidates.is_empty() {
        bail!(
            "no backups (backup-<sequence>-<time>.kbsnap) in {}",
            source.display()
        );
    }
    let (from, sequence) = newest_valid(&candidates)?;
    let replaced = prepare_data_dir(&args.data_dir, args.force)?;
    let snapshots = args.data_dir.join("snapshots");
    let installed = install_copy(&from, &snapshots, sequence)?;
    let line = serde_json::json!({
        "restored": installed,
        "from": from,
        "sequence": sequence,
        "replaced": replaced,
    });
    println!("{line}");
    Ok(())
}

/// Downloads and verifies the backup into a staging folder inside the data directory
/// first, so that nothing is moved aside (`--force`) unless a good snapshot is in hand.
async fn restore_from_s3(url: &S3Url, args: &RestoreArgs) -> anyhow::Result<()> {
    let (parent, name) = objects::split_backup_name(url);
    let staging = args
        .data_dir
        .join(format!(".restore-{}", std::process::id()));
    let downloaded = objects::download(&parent, name.as_deref(), &staging).await;
    let installed = downloaded.and_then(|(manifest, file)| {
        let replaced = prepare_data_dir(&args.data_dir, args.force)?;
        let snapshots = args.data_dir.join("snapshots");
        crate::durable::create_dir_all(&snapshots)
            .with_context(|| format!("cannot create {}", snapshots.display()))?;
        let target = snapshots.join(snapshot::file_name(manifest.sequence));
        std::fs::rename(&file, &target)
            .with_context(|| format!("cannot install {}", target.display()))?;
        crate::durable::sync_dir(&snapshots)?;
        Ok((manifest, target, replaced))
    });
    let _ = std::fs::remove_dir_all(&staging);
    let (manifest, target, replaced) = installed?;
    let line = serde_json::json!({
        "restored": target,
        "from": format!("{parent}/{}", manifest.name),
        "sequence": manifest.sequence,
        "replaced": replaced,
    });
    println!("{line}");
    Ok(())
}

/// Runs `kb-worker backups list`: one JSON line per backup, newest first.
pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    if let Some(url) = S3Url::parse(&args.from) {
        let url = url?;
        let store = objects::connect(&url, &Encryption::default())?;
        for manifest in objects::list(&store, &url).await? {
            println!("{}", serde_json::to_string(&manifest)?);
        }
        return Ok(());
    }
    for b in list_backups(Path::new(&args.from))? {
        let line =
            serde_json::json!({"file": b.path, "sequence": b.sequence, "created_unix": b.taken_at});
        println!("{line}");
    }
    Ok(())
}

/// The first candidate that verifies, with its sequence; bad ones are reported.
fn newest_valid(candidates: &[PathBuf]) -> anyhow::Result<(PathBuf, Seq)> {
    for path in candidates {
        match snapshot::verify_file(path) {
            Ok(sequence) => return Ok((path.clone(), sequence)),
            Err(e) => eprintln!("skipping {}: {e}", path.display()),
        }
    }
    bail!("none of the {} backup file(s) is valid", candidates.len())
}

/// Copies the backup file `from` into `snapshots` as the snapshot of `sequence` (through
/// a temporary file, checked again, made durable, then renamed), a block at a time.
fn install_copy(from: &Path, snapshots: &Path, sequence: Seq) -> anyhow::Result<PathBuf> {
    use std::io::Read;
    let mut source =
        std::fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mut incoming = snapshot::Incoming::create(snapshots)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = source
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", from.display()))?;
        if n == 0 {
            break;
        }
        incoming.write(&buf[..n])?;
    }
    let (checked, path) = incoming.finish(|_| snapshot::file_name(sequence))?;
    if checked.sequence != sequence {
        bail!("{} changed while it was copied", from.display());
    }
    Ok(path)
}

/// Refuses a data directory that already holds a log or snapshots, unless `force`, in
/// which case they are moved aside (never deleted) and the new folder is returned.
fn prepare_data_dir(data_dir: &Path, force: bool) -> anyhow::Result<Option<PathBuf>> {
    if !holds_data(data_dir) {
        return Ok(None);
    }
    let held: Vec<&str> = DATA_SUBDIRS
        .into_iter()
        .filter(|name| has_entries(&data_dir.join(name)))
        .collect();
    if !force {
        bail!(
            "{} already holds data ({}); restoring over it would mix two histories. \
             Stop the worker and pass --force to move it aside to replaced-<unix time>/",
            data_dir.display(),
            held.join(", ")
        );
    }
    let aside = data_dir.join(format!("replaced-{}", unix_now()));
    crate::durable::create_dir_all(&aside)
        .with_context(|| format!("cannot create {}", aside.display()))?;
    for name in DATA_SUBDIRS {
        let from = data_dir.join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name))
                .with_context(|| format!("cannot move {} aside", from.display()))?;
        }
    }
    // Both ends of the moves: a power loss must not bring the old log back next to the
    // restored snapshot.
    for dir in [&aside, data_dir] {
        crate::durable::sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(Some(aside))
}

/// Whether `data_dir` holds a log or snapshots.
fn holds_data(data_dir: &Path) -> bool {
    DATA_SUBDIRS
        .into_iter()
        .any(|name| has_entries(&data_dir.join(name)))
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

fn backup_name(sequence: Seq, taken_at: u64) -> String {
    format!("{}.kbsnap", objects::backup_name(sequence, taken_at))
}

fn parse_backup_name(name: &str) -> Option<(Seq, u64)> {
    objects::parse_backup_name(name.strip_suffix(".kbsnap")?)
}

/// Backups in `dir`, newest first (by time taken, then sequence).
fn list_backups(dir: &Path) -> anyhow::Result<Vec<BackupFile>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let parsed = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_backup_name);
        if let Some((sequence, taken_at)) = parsed {
            found.push(BackupFile {
                path,
                sequence,
                taken_at,
            });
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse((b.taken_at, b.sequence)));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    fn snapshot_bytes(sequence: Seq) -> Vec<u8> {
        let mut index = Index::new(tch::Device::Cpu);
        index.set_applied(sequence);
        snapshot::encode(&index).unwrap()
    }

    fn restore_args(from: &Path, data_dir: &Path, force: bool) -> RestoreArgs {
        RestoreArgs {
            from: from.to_string_lossy().into_owned(),
            data_dir: data_dir.to_path_buf(),
            force,
            if_empty: false,
        }
    }

    #[tokio::test]
    async fn restore_if_empty_leaves_a_data_dir_with_data_alone() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup-3-10.kbsnap");
        std::fs::write(&backup, snapshot_bytes(3)).unwrap();
        let data = dir.path().join("data");
        let args = |data: &Path| RestoreArgs {
            if_empty: true,
            ..restore_args(&backup, data, false)
        };
        // First start: empty volume, restored.
        restore(args(&data)).await.unwrap();
        let installed = data.join("snapshots").join(snapshot::file_name(3));
        assert!(installed.exists());
        // Every later start: the worker's data stays as it is.
        std::fs::write(&backup, snapshot_bytes(9)).unwrap();
        restore(args(&data)).await.unwrap();
        assert_eq!(snapshot::list(&data.join("snapshots")).unwrap().len(), 1);
        assert_eq!(std::fs::read(installed).unwrap(), snapshot_bytes(3));
    }

    #[test]
    fn backups_sort_newest_first_and_the_oldest_beyond_keep_expire() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "backup-5-100.kbsnap",
            "backup-9-300.kbsnap",
            "backup-7-200.kbsnap",
            "backup-x-1.kbsnap",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = list_backups(dir.path()).unwrap();
        let order: Vec<(Seq, u64)> = found.iter().map(|b| (b.sequence, b.taken_at)).collect();
        assert_eq!(order, [(9, 300), (7, 200), (5, 100)]);
        let expired: Vec<_> = found.iter().skip(2).map(|b| b.sequence).collect();
        assert_eq!(expired, [5]);
        assert_eq!(parse_backup_name(&backup_name(42, 7)), Some((42, 7)));
    }

    #[tokio::test]
    async fn restore_refuses_a_data_dir_that_holds_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup-3-10.kbsnap");
        std::fs::write(&backup, snapshot_bytes(3)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("wal")).unwrap();
        std::fs::write(data.join("wal/00000000000000000001.wal"), b"x").unwrap();

        let err = restore(restore_args(&backup, &data, false))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(!data.join("snapshots").exists());

        crate::durable::synced::take();
        restore(restore_args(&backup, &data, true)).await.unwrap();
        // The moves aside and the new snapshots/ are durable: their directories synced.
        let synced = crate::durable::synced::take();
        assert!(synced.contains(&data), "{synced:?}");
        assert!(synced.contains(&data.join("snapshots")), "{synced:?}");
        let installed = data.join("snapshots").join(snapshot::file_name(3));
        assert_eq!(std::fs::read(installed).unwrap(), snapshot_bytes(3));
        assert!(!data.join("wal").exists());
        let aside: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("replaced-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(data.join(&aside[0]).join("wal").is_dir());
    }

    #[tokio::test]
    async fn restore_from_a_directory_skips_a_corrupt_newest_backup() {
        let backups = tempfile::tempdir().unwrap();
        std::fs::write(
            backups.path().join("backup-4-100.kbsnap"),
            snapshot_bytes(4),
        )
        .unwrap();
        let mut corrupt = snapshot_bytes(8);
        corrupt[9] ^= 0xff;
        std::fs::write(backups.path().join("backup-8-200.kbsnap"), corrupt).unwrap();
        let data = tempfile::tempdir().unwrap();

        restore(restore_args(backups.path(), data.path(), false))
            .await
            .unwrap();
        let installed = snapshot::list(&data.path().join("snapshots")).unwrap();
        assert_eq!(installed.len(), 1);
        assert_eq!(installed[0].0, 4);
    }
}
