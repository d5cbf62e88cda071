//! A snapshot arriving in pieces (a download from a peer or a worker, a copy of a backup
//! file), written to a temporary file and verified from it before it gets its name, so
//! that nothing of it is held in memory: a replica bootstrapping a large collection needs no room for a second
//! copy of it.

use super::{io_err, verify_file, SnapshotError, TEMP_MARK};
use crate::log::Seq;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot being received into a folder (see [`Incoming::finish`]). Dropped
/// unfinished, it removes its temporary file; one a crash left is removed by
/// [`super::clean_temporary`].
pub struct Incoming {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    bytes: u64,
}

/// A snapshot received whole and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The last record it holds.
    pub sequence: Seq,
    pub bytes: u64,
}

impl Incoming {
    /// Starts receiving a snapshot into `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        crate::durable::create_dir_all(dir).map_err(io_err(dir))?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".incoming-{n}{TEMP_MARK}{}", std::process::id()));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            bytes: 0,
        })
    }

    /// The next bytes of the snapshot.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        self.bytes += data.len() as u64;
        match self.file.as_mut() {
            Some(file) => file.write_all(data).map_err(io_err(&self.tmp)),
            None => Ok(()),
        }
    }

    /// Makes what arrived durable, checks it as a load would read it (magic, length,
    /// checksum and the structure of every row, in one pass over the file) and renames it
    /// to the name `name` gives it; returns what was received and the file's path. A
    /// snapshot that fails a check is removed.
    pub fn finish(
        mut self,
        name: impl FnOnce(&Received) -> String,
    ) -> Result<(Received, PathBuf), SnapshotError> {
        if let Some(file) = self.file.take() {
            let file = file
                .into_inner()
                .map_err(|e| io_err(&self.tmp)(e.into_error()))?;
            file.sync_all().map_err(io_err(&self.tmp))?;
        }
        let received = Received {
            sequence: verify_file(&self.tmp)?,
            bytes: self.bytes,
        };
        let path = self.dir.join(name(&received));
        fs::rename(&self.tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok((received, path))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Gone after a successful rename; otherwise a partial or refused snapshot.
        let _ = fs::remove_file(&self.tmp);
    }
}
