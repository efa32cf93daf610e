//! One record of every file a config load read besides the config itself:
//! list files, pages, certificates and keys, CA files, the admin token and
//! secret files. A reload compares it with the disk to decide whether
//! anything changed (an edited fallback page or a rotated key reloads by
//! itself), and the file watcher watches the directories it names.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a file looked like when it was read: size, modification time and
/// identity. A save that renames a new file over the old one changes the
/// inode; an in-place write changes the time (nanoseconds) or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stamp {
    Missing,
    Seen { len: u64, mtime_ns: i128, inode: u64, dev: u64 },
}

impl Stamp {
    pub fn of(path: &Path) -> Self {
        match std::fs::metadata(path) {
            Ok(m) => Stamp::Seen {
                len: m.len(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                inode: m.ino(),
                dev: m.dev(),
            },
            Err(_) => Stamp::Missing,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRecord {
    entries: Vec<(PathBuf, Stamp)>,
}

impl FileRecord {
    /// Record `path` as read by this load. Stamped before it is read: a
    /// write in between makes the next check see a change (one extra
    /// reload), never miss one.
    pub fn note(&mut self, path: &Path) {
        if !self.entries.iter().any(|(p, _)| p == path) {
            self.entries.push((path.to_path_buf(), Stamp::of(path)));
        }
    }

    /// The files whose stamp differs from the disk now.
    pub fn changed(&self) -> Vec<&Path> {
        self.entries.iter().filter(|(p, s)| Stamp::of(p) != *s).map(|(p, _)| p.as_path()).collect()
    }

    pub fn is_current(&self) -> bool {
        self.entries.iter().all(|(p, s)| Stamp::of(p) == *s)
    }

    /// The stamps the files have now, as one comparable value.
    pub fn fresh(&self) -> Vec<Stamp> {
        self.entries.iter().map(|(p, _)| Stamp::of(p)).collect()
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().map(|(p, _)| p.as_path())
    }

    /// The directories of the recorded files (what the watcher watches).
    pub fn dirs(&self) -> BTreeSet<PathBuf> {
        self.paths().filter_map(|p| p.parent()).map(Path::to_path_buf).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_a_rename_or_a_removal_is_a_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let page = dir.path().join("page.html");
        std::fs::write(&page, "one").expect("write");
        let mut record = FileRecord::default();
        record.note(&page);
        record.note(&page);
        assert_eq!(record.paths().count(), 1, "one entry per file");
        assert!(record.is_current());

        std::fs::write(&page, "two!").expect("edit in place");
        assert_eq!(record.changed(), vec![page.as_path()]);

        let mut record = FileRecord::default();
        record.note(&page);
        let next = dir.path().join("page.html.new");
        std::fs::write(&next, "two!").expect("write");
        std::fs::rename(&next, &page).expect("rename over");
        assert!(!record.is_current(), "same size, new inode");

        let mut record = FileRecord::default();
        record.note(&page);
        std::fs::remove_file(&page).expect("remove");
        assert!(!record.is_current());
        assert_eq!(record.dirs().into_iter().collect::<Vec<_>>(), vec![dir.path().to_path_buf()]);
    }
}
