//! The kubelet's AtomicWriter (`pkg/volume/util/atomic_writer.go`): a volume's files live in a
//! timestamped directory `..<date>.<n>`, `..data` is a symlink to it, and every top-level
//! path is a symlink through `..data`. An update writes a new directory and swaps `..data`
//! with one `rename`, so a reader (a client re-reading its token) sees either the old set of
//! files or the new one, never a mix or a half-written file.
//!
//! The volume directory is bind-mounted into containers; all links are relative, so they
//! resolve inside the mount.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::projected::{FileContent, Payload};

/// The symlink that points at the current data directory.
pub const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

/// The current data directory, if any.
fn current_data_dir(dir: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(dir.join(DATA_LINK)).ok()?;
    Some(dir.join(target))
}

/// Whether the data directory holds exactly `payload` (content and mode).
fn matches(data_dir: &Path, payload: &Payload) -> bool {
    let mut on_disk = BTreeSet::new();
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            return false;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(data_dir) {
                on_disk.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    if on_disk.iter().ne(payload.keys()) {
        return false;
    }
    payload.iter().all(|(rel, f)| {
        let p = data_dir.join(rel);
        let mode_ok = std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o777 == f.mode);
        mode_ok && std::fs::read(&p).is_ok_and(|d| d == f.data)
    })
}

fn write_file(path: &Path, f: &FileContent) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::write(path, &f.data).map_err(io(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

/// A fresh data directory name: `..<UTC date>.<nanoseconds>`, as the kubelet's (a timestamp
/// plus a random suffix), unique within the volume.
fn new_data_dir_name(dir: &Path) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let base = now.strftime("..%Y_%m_%d_%H_%M_%S").to_string();
    let mut n = now.subsec_nanosecond();
    loop {
        let name = format!("{base}.{n:09}");
        if !dir.join(&name).exists() {
            return name;
        }
        n = n.wrapping_add(1);
    }
}

/// Makes `dir` hold exactly `payload`; returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> Result<bool> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let old = current_data_dir(dir);
    if let Some(old) = &old
        && matches(old, payload)
    {
        return Ok(false);
    }
    // 1. The new data directory, complete before anyone can see it.
    let name = new_data_dir_name(dir);
    let data_dir = dir.join(&name);
    std::fs::create_dir(&data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("setting the mode of {}", data_dir.display())))?;
    for (rel, f) in payload {
        write_file(&data_dir.join(rel), f)?;
    }
    // 2. The swap: a new link under a temporary name, renamed over `..data` (atomic).
    let tmp = dir.join(DATA_LINK_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(io(format!("linking {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(DATA_LINK))
        .map_err(io(format!("renaming {} to {DATA_LINK}", tmp.display())))?;
    // 3. User-visible links for the top-level names; links no longer in the payload go.
    let top: BTreeSet<&str> = payload.keys().filter_map(|k| k.split('/').next()).collect();
    for t in &top {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DATA_LINK}/{t}"), &link)
                .map_err(io(format!("linking {}", link.display())))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with("..") && !top.contains(n.as_str()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // 4. The old data directory.
    if let Some(old) = old
        && old != data_dir
    {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    FileContent {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn kubelet_layout_and_atomic_update() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let first = payload(&[
            ("token", "jwt-1", 0o644),
            ("ca.crt", "PEM", 0o644),
            ("namespace", "team", 0o644),
        ]);
        assert!(write(&dir, &first).unwrap());
        let data1 = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert!(data1.to_string_lossy().starts_with(".."), "{data1:?}");
        assert_eq!(
            std::fs::read_link(dir.join("token")).unwrap(),
            Path::new("..data/token")
        );
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "jwt-1");
        assert_eq!(entries(&dir).len(), 5, "{:?}", entries(&dir));

        // Same content: nothing is rewritten.
        assert!(!write(&dir, &first).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA_LINK)).unwrap(), data1);

        // A refreshed token: new data dir, swapped link, old dir removed, same names.
        let second = payload(&[
            ("token", "jwt-2", 0o644),
            ("ca.crt", "PEM", 0o644),
            ("namespace", "team", 0o644),
        ]);
        assert!(write(&dir, &second).unwrap());
        let data2 = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_ne!(data1, data2);
        assert!(!dir.join(&data1).exists(), "old data dir removed");
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "jwt-2");
        assert_eq!(entries(&dir).len(), 5, "{:?}", entries(&dir));
    }

    #[test]
    fn modes_subdirectories_and_removed_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        write(
            &dir,
            &payload(&[("a/b/c.txt", "x", 0o400), ("gone", "y", 0o644)]),
        )
        .unwrap();
        let mode = std::fs::metadata(dir.join("a/b/c.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        // A mode change alone is a change.
        assert!(
            write(
                &dir,
                &payload(&[("a/b/c.txt", "x", 0o440), ("gone", "y", 0o644)])
            )
            .unwrap()
        );
        write(&dir, &payload(&[("a/b/c.txt", "x", 0o440)])).unwrap();
        assert!(
            std::fs::symlink_metadata(dir.join("gone")).is_err(),
            "stale link removed"
        );
    }
}
