//! Which files an `ingest` argument stands for, their document ids, and where the state
//! file that tracks them lives.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// Extensions picked up when walking a directory.
const TEXT_EXTENSIONS: &[&str] = &["md", "markdown", "txt", "rst"];

/// A file to ingest and the document id it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    pub id: String,
    pub path: PathBuf,
    pub ext: String,
}

/// `DIR/.kb-ingest-COLLECTION.json`, or beside the file for a file argument.
pub(super) fn default_state_path(root: &Path, collection: &str) -> PathBuf {
    let name = format!(".kb-ingest-{collection}.json");
    if root.is_dir() {
        return root.join(name);
    }
    match root.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(name),
        _ => PathBuf::from(name),
    }
}

/// The files under `root` (or `root` itself), in a stable order.
pub fn discover(root: &Path) -> anyhow::Result<Vec<SourceFile>> {
    let meta =
        std::fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    if meta.is_file() {
        let id = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} has no file name", root.display()))?;
        return Ok(vec![source(id, root.to_path_buf())]);
    }
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    let mut files = Vec::new();
    for entry in walker {
        let entry = entry.with_context(|| format!("cannot walk {}", root.display()))?;
        if !entry.file_type().is_file() || !has_text_extension(entry.path()) {
            continue;
        }
        let relative = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let id = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        files.push(source(id, entry.into_path()));
    }
    Ok(files)
}

fn source(id: String, path: PathBuf) -> SourceFile {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    SourceFile { id, path, ext }
}

fn has_text_extension(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .is_some_and(|e| TEXT_EXTENSIONS.contains(&e.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("guide/deep")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("intro.md"), "# Intro\nhello").unwrap();
        std::fs::write(root.join("guide/setup.TXT"), "setup").unwrap();
        std::fs::write(root.join("guide/deep/notes.rst"), "notes").unwrap();
        std::fs::write(root.join("guide/image.png"), [0u8, 1, 2]).unwrap();
        std::fs::write(root.join(".git/HEAD.md"), "hidden").unwrap();
        std::fs::write(root.join(".draft.md"), "hidden").unwrap();
        dir
    }

    #[test]
    fn walk_finds_text_files_with_relative_ids_and_skips_hidden_entries() {
        let dir = sample_tree();
        let ids: Vec<String> = discover(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(ids, ["guide/deep/notes.rst", "guide/setup.TXT", "intro.md"]);
        let single = discover(&dir.path().join("guide/deep/notes.rst")).unwrap();
        assert_eq!(single[0].id, "notes.rst");
        assert_eq!(single[0].ext, "rst");
    }

    #[test]
    fn state_file_defaults_to_the_directory_or_beside_the_file() {
        let dir = sample_tree();
        let expected = dir.path().join(".kb-ingest-docs.json");
        assert_eq!(default_state_path(dir.path(), "docs"), expected);
        assert_eq!(
            default_state_path(&dir.path().join("intro.md"), "docs"),
            expected
        );
    }
}
