//! The ways a config file changes on disk in production, reproduced exactly,
//! because a file watcher that handles one of them can miss another:
//! - written in place (truncate + write: editors, `echo > file`),
//! - replaced by rename (atomic writers, `sed -i`, config-management tools),
//! - a Kubernetes ConfigMap volume: `gateway.toml -> ..data/gateway.toml`,
//!   `..data -> ..<timestamp>/`, updated by swapping the `..data` symlink
//!   with a rename and deleting the old timestamped directory (kubelet's
//!   AtomicWriter).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Replaces the placeholders a test's config text may contain:
/// `{listen}` (proxy address), `{admin}` (admin address) and `{dir}` (the
/// gateway's config directory, e.g. for certificate paths).
pub(crate) fn substitute(text: &str, listen: SocketAddr, admin: SocketAddr, dir: &Path) -> String {
    text.replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{dir}", &dir.display().to_string())
}

/// Truncates and rewrites the file, keeping its inode (follows symlinks).
pub(crate) fn write_in_place(path: &Path, text: &str) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot open {} for writing: {err}", path.display()));
    file.write_all(text.as_bytes()).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    file.sync_all().expect("config file sync");
}

/// Writes a sibling temp file, then renames it over `path`: the watched
/// inode disappears and a new one takes its name.
pub(crate) fn replace_by_rename(path: &Path, text: &str) {
    let dir = path.parent().expect("config path has a parent directory");
    let name = path.file_name().expect("config path has a file name");
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    write_in_place(&tmp, text);
    fs::rename(&tmp, path)
        .unwrap_or_else(|err| panic!("cannot rename {} over {}: {err}", tmp.display(), path.display()));
}

/// Builds a ConfigMap-style volume in `dir` holding `file_name`; returns the
/// path the gateway should be given (`dir/file_name`, a symlink).
pub(crate) fn configmap_init(dir: &Path, file_name: &str, text: &str) -> PathBuf {
    let data_dir = timestamped_dir(dir, 0);
    write_data_dir(dir, &data_dir, file_name, text);
    symlink(&data_dir, dir.join("..data")).expect("create ..data symlink");
    let link = dir.join(file_name);
    symlink(Path::new("..data").join(file_name), &link).expect("create config symlink");
    link
}

/// Publishes new contents the way kubelet does: new timestamped directory,
/// `..data_tmp -> new`, rename `..data_tmp` over `..data`, remove the old
/// directory. `swap` numbers the update so directory names stay unique.
pub(crate) fn configmap_swap(dir: &Path, file_name: &str, text: &str, swap: u32) {
    let data = dir.join("..data");
    let old = fs::read_link(&data).expect("..data is a symlink");
    let new = timestamped_dir(dir, swap);
    write_data_dir(dir, &new, file_name, text);
    let tmp = dir.join("..data_tmp");
    symlink(&new, &tmp).expect("create ..data_tmp symlink");
    fs::rename(&tmp, &data).expect("rename ..data_tmp over ..data");
    fs::remove_dir_all(dir.join(old)).expect("remove the old timestamped directory");
}

/// A relative name like kubelet's `..2026_01_02_15_04_05.123456789`; the
/// seconds field carries the swap number so names never collide.
fn timestamped_dir(dir: &Path, swap: u32) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = PathBuf::from(format!("..2026_01_02_15_04_{swap:02}.{nanos:09}"));
    assert!(!dir.join(&name).exists(), "timestamped dir name collision");
    name
}

fn write_data_dir(dir: &Path, data_dir: &Path, file_name: &str, text: &str) {
    let full = dir.join(data_dir);
    fs::create_dir(&full).expect("create timestamped data directory");
    write_in_place(&full.join(file_name), text);
}
