//! A snapshot arriving in pieces (a download from a peer or a worker, a copy of a backup
//! file), written to a temporary file and verified on the way, so that nothing of it is
//! held in memory: a replica bootstrapping a large collection needs no room for a second
//! copy of it.

use super::{io_err, verify_file, Checked, SnapshotError, StreamCheck, TEMP_MARK};
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
    check: StreamCheck,
}

impl Incoming {
    /// Starts receiving a snapshot into `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".incoming-{n}{TEMP_MARK}{}", std::process::id()));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            check: StreamCheck::default(),
        })
    }

    /// The next bytes of the snapshot.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        self.check.update(data);
        match self.file.as_mut() {
            Some(file) => file.write_all(data).map_err(io_err(&self.tmp)),
            None => Ok(()),
        }
    }

    /// Checks what arrived (magic, checksum and length on the way, then the structure of
    /// every row from the written file), makes it durable and renames it to the name
    /// `name` gives it; returns what was checked and the file's path. A snapshot that
    /// fails a check is removed.
    pub fn finish(
        mut self,
        name: impl FnOnce(&Checked) -> String,
    ) -> Result<(Checked, PathBuf), SnapshotError> {
        let check = std::mem::take(&mut self.check);
        let checked = check
            .finish()
            .map_err(|e| SnapshotError::Invalid(self.tmp.clone(), e))?;
        if let Some(file) = self.file.take() {
            let file = file
                .into_inner()
                .map_err(|e| io_err(&self.tmp)(e.into_error()))?;
            file.sync_all().map_err(io_err(&self.tmp))?;
        }
        verify_file(&self.tmp)?;
        let path = self.dir.join(name(&checked));
        fs::rename(&self.tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok((checked, path))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Gone after a successful rename; otherwise a partial or refused snapshot.
        let _ = fs::remove_file(&self.tmp);
    }
}
