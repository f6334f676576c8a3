//! Container processes: resolving the executable, spawning through `container-init`, log
//! files, pid files, signals, and waiting for the exit.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tracing::debug;

use crate::error::{Error, Result};
use crate::procfs;

/// Everything needed to start one container run.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Final argv (expanded); `argv[0]` is resolved against the container's PATH.
    pub argv: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// `/run/netns/<pod netns>`.
    pub netns_path: PathBuf,
    /// The pod's hosts file.
    pub hosts_file: PathBuf,
    /// Volumes to bind-mount inside the container.
    pub mounts: Vec<crate::volumes::BindMount>,
    /// Scratch directory for making mount points (in the pod directory).
    pub staging_dir: PathBuf,
    /// Hostname inside the container.
    pub hostname: String,
    /// Log file (stdout and stderr).
    pub log_path: PathBuf,
    /// Where the pid is recorded for `node-agent cleanup`.
    pub pid_file: PathBuf,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code; 128 + signal when killed by a signal.
    pub code: i32,
    /// The signal, if killed by one.
    pub signal: Option<i32>,
}

impl Exit {
    /// From a wait status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit { code, signal: None },
            (None, Some(sig)) => Exit {
                code: 128 + sig,
                signal: Some(sig),
            },
            (None, None) => Exit {
                code: 255,
                signal: None,
            },
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `program` like `execvp` would with the container's PATH, with the runtime's error
/// text when it is missing (`exec: "x": executable file not found in $PATH`).
pub fn resolve_program(program: &str, path_env: &str, cwd: &Path) -> Result<PathBuf> {
    if program.contains('/') {
        let p = cwd.join(program);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::Spec(format!(
                "exec: {program:?}: stat {program}: no such file or executable"
            )))
        };
    }
    path_env
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Error::Spec(format!(
                "exec: {program:?}: executable file not found in $PATH"
            ))
        })
}

/// A started container run.
#[derive(Debug)]
pub struct Running {
    child: tokio::process::Child,
    /// Pid of the container's first process (also its process group).
    pub pid: i32,
    /// When it started.
    pub started_at: Timestamp,
    /// Its mount namespace, which holds the whole process tree.
    pub mnt_ns: Option<Arc<NsHandle>>,
    pid_file: PathBuf,
}

/// An open namespace file. Holding it keeps the namespace alive, so its inode number cannot
/// be reused by a namespace created later (a new container's), which would otherwise make a
/// late "kill everything in namespace N" hit the wrong container.
#[derive(Debug)]
pub struct NsHandle {
    _file: std::fs::File,
    /// The namespace inode.
    pub inode: u64,
}

/// Starts a run. The log of the previous run, if any, becomes `<name>.previous.log`.
pub async fn spawn(spec: &LaunchSpec) -> Result<Running> {
    if spec.log_path.exists() {
        let prev = spec.log_path.with_extension("previous.log");
        std::fs::rename(&spec.log_path, &prev)
            .map_err(|e| Error::io(format!("rotating log {}", spec.log_path.display()), e))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|e| Error::io(format!("opening log {}", spec.log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::io("duplicating log file handle", e))?;
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("container-init")
        .arg("--netns")
        .arg(&spec.netns_path)
        .arg("--hosts")
        .arg(&spec.hosts_file)
        .arg("--hostname")
        .arg(&spec.hostname)
        .arg("--staging")
        .arg(&spec.staging_dir)
        .args(crate::container_init::mount_args(&spec.mounts))
        .arg("--")
        .args(&spec.argv)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {:?}", spec.argv.first()), e))?;
    let started_at = Timestamp::now();
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| Error::Spec("container process exited before it got a pid".to_string()))?;
    if let Err(e) = std::fs::write(&spec.pid_file, format!("{pid}\n")) {
        debug!(error = %e, pid_file = %spec.pid_file.display(), "could not write pid file");
    }
    let mut running = Running {
        child,
        pid,
        started_at,
        mnt_ns: None,
        pid_file: spec.pid_file.clone(),
    };
    running.mnt_ns = running.learn_mnt_ns().await;
    Ok(running)
}

impl Running {
    /// `process://<pid>`, the containerID in the pod status.
    pub fn container_id(&self) -> String {
        format!("process://{}", self.pid)
    }

    /// Waits (bounded) until container-init has unshared its mount namespace, and holds it.
    async fn learn_mnt_ns(&self) -> Option<Arc<NsHandle>> {
        use std::os::unix::fs::MetadataExt;
        let me = i32::try_from(std::process::id()).ok()?;
        let ours = procfs::ns_inode(me, "mnt");
        for _ in 0..200 {
            let file = std::fs::File::open(format!("/proc/{}/ns/mnt", self.pid)).ok()?;
            let inode = file.metadata().ok()?.ino();
            if Some(inode) != ours {
                return Some(Arc::new(NsHandle { _file: file, inode }));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Waits for the first process to exit, then kills whatever it left behind in the
    /// container (like a container runtime when the init process dies).
    pub async fn wait(&mut self) -> Exit {
        let exit = match self.child.wait().await {
            Ok(status) => Exit::from_status(status),
            Err(_) => Exit {
                code: 255,
                signal: None,
            },
        };
        self.kill_leftovers().await;
        let _ = std::fs::remove_file(&self.pid_file);
        exit
    }

    async fn kill_leftovers(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        if let Some(ns) = &self.mnt_ns {
            crate::netns::kill_ns_members("mnt", ns.inode).await;
        }
    }

    /// The mount namespace inode (stable while this run is held).
    pub fn mnt_ns_inode(&self) -> Option<u64> {
        self.mnt_ns.as_ref().map(|n| n.inode)
    }

    /// A handle to signal the run while another task waits for it.
    pub fn signaller(&self) -> Signaller {
        Signaller {
            pid: self.pid,
            mnt_ns: self.mnt_ns.clone(),
        }
    }
}

/// Sends signals to a container run.
#[derive(Debug, Clone)]
pub struct Signaller {
    /// Pid (= process group) of the run.
    pub pid: i32,
    /// Its mount namespace.
    pub mnt_ns: Option<Arc<NsHandle>>,
}

impl Signaller {
    /// SIGTERM to the container's process group (what `docker stop` / the kubelet send).
    pub fn terminate(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
    }

    /// SIGKILL to the process group and every process of the container.
    pub async fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        if let Some(ns) = &self.mnt_ns {
            crate::netns::kill_ns_members("mnt", ns.inode).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::found_in_path("sh", "/nonexistent:/bin:/usr/bin", true)]
    #[case::absolute("/bin/sh", "", true)]
    #[case::missing("definitely-not-a-command-xyz", "/bin:/usr/bin", false)]
    #[case::empty_path("sh", "", false)]
    fn program_resolution(#[case] program: &str, #[case] path: &str, #[case] ok: bool) {
        let r = resolve_program(program, path, Path::new("/"));
        assert_eq!(r.is_ok(), ok, "{r:?}");
    }

    #[test]
    fn missing_program_message_matches_runtime() {
        let err = resolve_program("dask-worker", "/bin", Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"dask-worker\": executable file not found in $PATH"
        );
    }

    #[rstest]
    #[case::exit_code(std::process::ExitStatus::from_raw(3 << 8), Exit { code: 3, signal: None })]
    #[case::sigkill(std::process::ExitStatus::from_raw(9), Exit { code: 137, signal: Some(9) })]
    #[case::sigterm(std::process::ExitStatus::from_raw(15), Exit { code: 143, signal: Some(15) })]
    fn exit_codes(#[case] status: std::process::ExitStatus, #[case] expected: Exit) {
        assert_eq!(Exit::from_status(status), expected);
    }
}
