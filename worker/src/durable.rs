//! Directory entries that survive a power loss: a new file or directory is durable only
//! once the directory holding its name is fsynced (a file's own fsync does not cover its
//! name), so every directory the worker creates or renames into is synced here.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Fsyncs the directory `dir` (its entries: names created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    synced::record(dir);
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then fsyncs `dir` and the parent of every directory it created, so
/// neither the new directories nor later entries in them can vanish with a power loss.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir)?;
    // Outermost first: a parent's entry for a child is synced before the child's own.
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    if !missing.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Test support: the directories this thread fsynced.
#[cfg(test)]
pub mod synced {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn record(dir: &Path) {
        SYNCED.with(|s| s.borrow_mut().push(dir.to_path_buf()));
    }

    /// The directories synced on this thread since the last call.
    pub fn take() -> Vec<PathBuf> {
        SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_nested_directories_syncs_each_parent_of_a_new_entry() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        synced::take();
        create_dir_all(&data.join("wal")).unwrap();
        assert_eq!(
            synced::take(),
            vec![root.path().to_path_buf(), data.clone(), data.join("wal")]
        );
        // Nothing new: nothing to sync.
        create_dir_all(&data.join("wal")).unwrap();
        assert!(synced::take().is_empty());
    }
}
