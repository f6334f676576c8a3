//! `dask-kube up --detach`: the cluster must stay usable after the command exits, so a
//! background supervisor process (`dask-kube attach NAME --daemon`, in its own session)
//! keeps the local port-forward listener and, with `--adapt`, the adapt controller alive.
//! It records its pid, host and address in a state file under
//! `${XDG_STATE_HOME:-~/.local/state}/dask-kube/` and in an annotation on the scheduler pod;
//! `dask-kube down NAME` stops it.

use crate::{Error, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Bound on the supervisor reporting its address after it was started.
pub const SUPERVISOR_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the supervisor exiting after SIGTERM before it gets SIGKILL.
pub const SUPERVISOR_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time between checks of the state file or the process.
const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// What a running supervisor reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorState {
    /// Cluster name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Supervisor process id.
    pub pid: u32,
    /// Host it runs on.
    pub host: String,
    /// Scheduler address for clients on this host.
    pub address: String,
    /// Dashboard link.
    pub dashboard: String,
    /// Adaptive range, if it adapts.
    pub adapt: Option<(u32, u32)>,
    /// Log file.
    pub log: PathBuf,
}

/// The directory of state and log files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// `${XDG_STATE_HOME:-~/.local/state}/dask-kube`.
    pub fn from_env() -> Self {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("dask-kube-state"));
        StateDir(base.join("dask-kube"))
    }

    fn file(&self, namespace: &str, name: &str, ext: &str) -> PathBuf {
        self.0.join(format!("{namespace}_{name}.{ext}"))
    }

    /// The state file of a cluster's supervisor.
    pub fn state_file(&self, namespace: &str, name: &str) -> PathBuf {
        self.file(namespace, name, "json")
    }

    /// The log file of a cluster's supervisor.
    pub fn log_file(&self, namespace: &str, name: &str) -> PathBuf {
        self.file(namespace, name, "log")
    }

    /// Where the client's copy of a cluster's certificates is written.
    pub fn tls_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.file(namespace, name, "tls")
    }

    /// Removes the client's copy of a cluster's certificates (the cluster is gone).
    pub fn remove_tls(&self, namespace: &str, name: &str) {
        let _ = std::fs::remove_dir_all(self.tls_dir(namespace, name));
    }

    /// Writes the state atomically (readers never see half a file).
    pub fn write(&self, state: &SupervisorState) -> Result<()> {
        std::fs::create_dir_all(&self.0)
            .map_err(|e| Error::io(format!("creating {}", self.0.display()), e))?;
        let path = self.state_file(&state.namespace, &state.name);
        let tmp = path.with_extension(format!("json.{}", state.pid));
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| Error::SupervisorFailed(e.to_string()))?;
        std::fs::write(&tmp, text)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Reads a state file; `None` when there is none or it is unreadable.
    pub fn read(&self, namespace: &str, name: &str) -> Option<SupervisorState> {
        let text = std::fs::read_to_string(self.state_file(namespace, name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Removes the state file if it still belongs to `pid`.
    pub fn remove(&self, namespace: &str, name: &str, pid: u32) {
        if self.read(namespace, name).is_some_and(|s| s.pid == pid) {
            let _ = std::fs::remove_file(self.state_file(namespace, name));
        }
    }
}

/// This host's name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether `pid` is a live supervisor of `name` (not a recycled pid).
pub fn is_supervisor(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let has = |w: &str| words.contains(&w.as_bytes());
    has("attach") && has(name) && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// Starts `exe args...` as a background process logging to `log`; it calls `setsid` itself
/// (`attach --daemon`) so terminal signals do not reach it.
pub fn spawn(exe: &Path, args: &[String], log: &Path) -> Result<std::process::Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("duplicating the log file", e))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::SupervisorFailed(format!("cannot start {}: {e}", exe.display())))
}

/// Waits until the supervisor `child` wrote its state; if it exits first, the error quotes
/// the end of its log.
pub async fn wait_ready(
    dir: &StateDir,
    namespace: &str,
    name: &str,
    child: &mut std::process::Child,
) -> Result<SupervisorState> {
    let deadline = Instant::now() + SUPERVISOR_START_TIMEOUT;
    let log = dir.log_file(namespace, name);
    loop {
        if let Some(state) = dir.read(namespace, name)
            && state.pid == child.id()
        {
            return Ok(state);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::SupervisorFailed(format!(
                "the supervisor exited ({status}) before it was ready; {}:\n{}",
                log.display(),
                tail.join("\n")
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!(
                    "the supervisor to report its address (log: {})",
                    log.display()
                ),
                seconds: SUPERVISOR_START_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

/// Stops a supervisor on this host: SIGTERM, then SIGKILL after a bound. Returns whether
/// one was running.
pub async fn stop(dir: &StateDir, namespace: &str, name: &str) -> Result<bool> {
    let Some(state) = dir.read(namespace, name) else {
        return Ok(false);
    };
    if state.host != hostname() || !is_supervisor(state.pid, name) {
        dir.remove(namespace, name, state.pid);
        return Ok(false);
    }
    let pid = Pid::from_raw(
        i32::try_from(state.pid).map_err(|_| Error::SupervisorFailed("bad pid".into()))?,
    );
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + SUPERVISOR_STOP_TIMEOUT;
    while is_supervisor(state.pid, name) {
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
    dir.remove(namespace, name, state.pid);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pid: u32) -> SupervisorState {
        SupervisorState {
            name: "dask-a-1".into(),
            namespace: "ns".into(),
            pid,
            host: hostname(),
            address: "tcp://127.0.0.1:40000".into(),
            dashboard: "http://127.0.0.1:8787/status".into(),
            adapt: Some((1, 4)),
            log: PathBuf::from("/x.log"),
        }
    }

    #[test]
    fn state_round_trips_and_is_removed_only_by_its_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().join("dask-kube"));
        dir.write(&state(42)).unwrap();
        assert_eq!(dir.read("ns", "dask-a-1"), Some(state(42)));
        dir.remove("ns", "dask-a-1", 7);
        assert!(
            dir.read("ns", "dask-a-1").is_some(),
            "another pid must not remove it"
        );
        dir.remove("ns", "dask-a-1", 42);
        assert!(dir.read("ns", "dask-a-1").is_none());
    }

    #[test]
    fn this_test_process_is_not_a_supervisor() {
        assert!(!is_supervisor(std::process::id(), "dask-a-1"));
        assert!(!is_supervisor(u32::MAX, "dask-a-1"));
    }

    #[tokio::test]
    async fn stopping_without_a_live_supervisor_cleans_the_stale_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_owned());
        dir.write(&state(u32::MAX - 1)).unwrap();
        assert!(!stop(&dir, "ns", "dask-a-1").await.unwrap());
        assert!(dir.read("ns", "dask-a-1").is_none());
    }

    #[tokio::test]
    async fn a_supervisor_that_dies_early_is_reported_with_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_owned());
        let log = dir.log_file("ns", "c");
        let mut child = spawn(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo cannot reach the API server; exit 3".into(),
            ],
            &log,
        )
        .unwrap();
        let err = wait_ready(&dir, "ns", "c", &mut child)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot reach the API server"), "{err}");
    }
}
