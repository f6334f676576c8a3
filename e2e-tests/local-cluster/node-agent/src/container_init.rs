//! The first process of every container (`node-agent container-init`): enters the pod's
//! network namespace, takes a private mount and UTS namespace, bind-mounts the pod's hosts file
//! over /etc/hosts and the pod's volumes at their mount paths, sets the hostname, then execs
//! the container's command.
//!
//! A mount path whose parent does not exist on this host (the service-account volume's
//! `/var/run/secrets/kubernetes.io/serviceaccount` usually) is made inside the container's
//! mount namespace only: the deepest existing ancestor (`/run`) is covered with a tmpfs that
//! holds bind mounts of everything the ancestor had, plus the new directories. The host's
//! filesystem is never written to.
//!
//! A separate exec (rather than a `pre_exec` hook in the agent) keeps the agent free of unsafe
//! code and of post-fork restrictions; the pid stays the same through the exec, so the agent's
//! child *is* the container process.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};
use crate::volumes::BindMount;

/// `ro`/`rw` SOURCE TARGET triples as `container-init --mount` takes them.
pub fn mount_args(mounts: &[BindMount]) -> Vec<OsString> {
    let mut out = Vec::new();
    for m in mounts {
        out.push(OsString::from("--mount"));
        out.push(OsString::from(if m.read_only { "ro" } else { "rw" }));
        out.push(m.source.clone().into_os_string());
        out.push(m.target.clone().into_os_string());
    }
    out
}

/// Parses the values of repeated `--mount MODE SOURCE TARGET`.
pub fn parse_mounts(values: &[OsString]) -> Result<Vec<BindMount>> {
    if !values.len().is_multiple_of(3) {
        return Err(Error::Flag("--mount takes MODE SOURCE TARGET".into()));
    }
    values
        .chunks_exact(3)
        .map(|c| {
            let read_only = match c[0].to_str() {
                Some("ro") => true,
                Some("rw") => false,
                _ => {
                    return Err(Error::Flag(format!(
                        "--mount mode {:?}: expected ro or rw",
                        c[0]
                    )));
                }
            };
            let target = PathBuf::from(&c[2]);
            if !target.is_absolute() {
                return Err(Error::Flag(format!(
                    "--mount target {} must be absolute",
                    target.display()
                )));
            }
            Ok(BindMount {
                source: PathBuf::from(&c[1]),
                target,
                read_only,
            })
        })
        .collect()
}

/// The deepest ancestor of `target` for which `exists` holds (`/` at worst).
pub fn deepest_existing_ancestor(target: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let mut anc = target.parent();
    while let Some(a) = anc {
        if exists(a) {
            return a.to_path_buf();
        }
        anc = a.parent();
    }
    PathBuf::from("/")
}

fn sys(context: String) -> impl FnOnce(nix::Error) -> Error {
    move |e| Error::sys(context, e)
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

fn bind(source: &Path, target: &Path) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!(
        "bind-mounting {} on {}",
        source.display(),
        target.display()
    )))
}

/// Covers `dir` with a tmpfs that shows what `dir` had (each entry bind-mounted back, symlinks
/// copied), so new entries can be made in it without touching the host.
fn cover_with_tmpfs(dir: &Path, staging: &Path) -> Result<()> {
    if staging.starts_with(dir) {
        return Err(Error::Spec(format!(
            "cannot make a mount point under {}: it holds the pod directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(staging).map_err(io(format!("creating {}", staging.display())))?;
    bind(dir, staging)?;
    let meta = std::fs::metadata(staging).map_err(io(format!("reading {}", dir.display())))?;
    let options = format!(
        "mode={:o},uid={},gid={}",
        meta.permissions().mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(sys(format!("mounting a tmpfs on {}", dir.display())))?;
    let entries = std::fs::read_dir(staging).map_err(io(format!("listing {}", dir.display())))?;
    for e in entries.flatten() {
        let (src, dst) = (e.path(), dir.join(e.file_name()));
        let ft = e
            .file_type()
            .map_err(io(format!("reading {}", src.display())))?;
        if ft.is_symlink() {
            let to = std::fs::read_link(&src).map_err(io(format!("reading {}", src.display())))?;
            std::os::unix::fs::symlink(&to, &dst)
                .map_err(io(format!("linking {}", dst.display())))?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst).map_err(io(format!("creating {}", dst.display())))?;
            bind(&src, &dst)?;
        } else {
            std::fs::File::create(&dst).map_err(io(format!("creating {}", dst.display())))?;
            bind(&src, &dst)?;
        }
    }
    umount2(staging, MntFlags::MNT_DETACH).map_err(sys(format!("unmounting {}", staging.display())))
}

/// Makes sure `target` exists as a directory or file inside this mount namespace.
fn ensure_mount_point(
    target: &Path,
    is_dir: bool,
    staging: &Path,
    covered: &mut Vec<PathBuf>,
) -> Result<()> {
    if target.exists() {
        return Ok(());
    }
    let anc = deepest_existing_ancestor(target, Path::exists);
    let anc = std::fs::canonicalize(&anc).map_err(io(format!("resolving {}", anc.display())))?;
    if !covered.iter().any(|c| anc.starts_with(c)) {
        if anc == Path::new("/") {
            return Err(Error::Spec(format!(
                "mount path {}: no parent directory of it exists on this host",
                target.display()
            )));
        }
        cover_with_tmpfs(&anc, staging)?;
        covered.push(anc);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    if is_dir {
        std::fs::create_dir(target).map_err(io(format!("creating {}", target.display())))
    } else {
        std::fs::File::create(target)
            .map(drop)
            .map_err(io(format!("creating {}", target.display())))
    }
}

fn mount_volume(m: &BindMount, staging: &Path, covered: &mut Vec<PathBuf>) -> Result<()> {
    let is_dir = std::fs::metadata(&m.source)
        .map_err(io(format!("volume source {}", m.source.display())))?
        .is_dir();
    ensure_mount_point(&m.target, is_dir, staging, covered)?;
    bind(&m.source, &m.target)?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(sys(format!("making {} read-only", m.target.display())))?;
    }
    Ok(())
}

/// Sets up the namespaces and execs `argv`; returns only on failure.
///
/// `staging` is an empty directory (in the pod directory) used while making mount points.
pub fn run(
    netns: &Path,
    hosts: &Path,
    hostname: &str,
    mounts: &[BindMount],
    staging: &Path,
    argv: &[OsString],
) -> Result<std::convert::Infallible> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Spec("container-init: no command given".to_string()))?;
    let ns = std::fs::File::open(netns)
        .map_err(|e| Error::io(format!("opening network namespace {}", netns.display()), e))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::sys(format!("entering network namespace {}", netns.display()), e))?;
    drop(ns);
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| Error::sys("unsharing mount and UTS namespaces", e))?;
    // Private propagation: the bind mount below must not leak into the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| Error::sys("making / private in the container mount namespace", e))?;
    mount(
        Some(hosts),
        "/etc/hosts",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        Error::sys(
            format!("bind-mounting {} over /etc/hosts", hosts.display()),
            e,
        )
    })?;
    let mut covered = Vec::new();
    for m in mounts {
        mount_volume(m, staging, &mut covered)?;
    }
    nix::unistd::sethostname(hostname)
        .map_err(|e| Error::sys(format!("setting hostname {hostname:?}"), e))?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(Error::io(
        format!("exec {}", program.to_string_lossy()),
        err,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn mount_args_round_trip() {
        let mounts = vec![
            BindMount {
                source: "/state/pods/p/volumes/kubernetes.io~projected/kube-api-access-x".into(),
                target: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                read_only: true,
            },
            BindMount {
                source: "/state/a b".into(),
                target: "/data".into(),
                read_only: false,
            },
        ];
        let args = mount_args(&mounts);
        let values: Vec<OsString> = args.into_iter().filter(|a| a != "--mount").collect();
        assert_eq!(parse_mounts(&values).unwrap(), mounts);
    }

    #[rstest]
    #[case::not_triples(&["ro", "/a"], "MODE SOURCE TARGET")]
    #[case::bad_mode(&["rx", "/a", "/b"], "expected ro or rw")]
    #[case::relative_target(&["ro", "/a", "b"], "must be absolute")]
    fn bad_mount_args(#[case] values: &[&str], #[case] message: &str) {
        let values: Vec<OsString> = values.iter().map(OsString::from).collect();
        let err = parse_mounts(&values).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }

    #[rstest]
    #[case::service_account_dir("/var/run/secrets/kubernetes.io/serviceaccount", &["/var/run", "/var", "/"], "/var/run")]
    #[case::parent_exists("/etc/app/config", &["/etc/app", "/etc", "/"], "/etc/app")]
    #[case::only_root("/nowhere/x", &["/"], "/")]
    fn ancestors(#[case] target: &str, #[case] existing: &[&str], #[case] expected: &str) {
        let got = deepest_existing_ancestor(Path::new(target), |p| {
            existing.iter().any(|e| Path::new(e) == p)
        });
        assert_eq!(got, PathBuf::from(expected));
    }
}
