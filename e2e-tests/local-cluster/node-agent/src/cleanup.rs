//! Leftover removal: container processes recorded in pid files, this instance's network
//! namespaces (with every process still inside) and, on request, the bridge.
//!
//! Run at agent start (after a crash), at agent stop, and by the `cluster down` hook through
//! `node-agent cleanup`, so nothing a pod started survives the cluster.

use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tracing::info;

use crate::netns::PodNetwork;
use crate::procfs;

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Processes killed from pid files.
    pub processes: usize,
    /// Network namespaces deleted.
    pub namespaces: usize,
}

fn boot_time_secs() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// True if `pid` is plausibly the process a pid file written at `written` refers to: it
/// started no later than 10 s after the file was written (so a recycled pid is left alone).
pub fn pid_matches_file(pid: i32, written: SystemTime) -> bool {
    let (Some(btime), Some(ticks)) = (boot_time_secs(), procfs::start_ticks(pid)) else {
        return false;
    };
    let started = btime + ticks / clock_ticks();
    let written = written
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    started <= written + 10
}

/// Kills the process groups recorded in `<state>/pods/*/*.pid`.
pub fn kill_recorded(state_dir: &Path) -> usize {
    let mut killed = 0;
    let Ok(pods) = std::fs::read_dir(state_dir.join("pods")) else {
        return 0;
    };
    for pod in pods.flatten() {
        let Ok(files) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pid") {
                continue;
            }
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            let written = f
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if let Some(pid) = pid.filter(|p| *p > 1)
                && procfs::alive(pid)
                && pid_matches_file(pid, written)
            {
                info!(pid, pid_file = %path.display(), "killing leftover container process group");
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed += 1;
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    killed
}

/// Kills recorded processes and deletes this instance's network namespaces.
pub async fn sweep(state_dir: &Path, network: &PodNetwork) -> Swept {
    let processes = kill_recorded(state_dir);
    let mut namespaces = 0;
    if let Ok(list) = network.list_own().await {
        for ns in list {
            info!(netns = %ns, "removing leftover network namespace");
            network.destroy_netns(&ns).await;
            namespaces += 1;
        }
    }
    if processes > 0 {
        // Let the kernel reap before anyone checks.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Swept {
        processes,
        namespaces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn own_pid_matches_a_fresh_file_but_not_an_old_one() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(pid_matches_file(me, SystemTime::now()));
        assert!(
            !pid_matches_file(me, SystemTime::UNIX_EPOCH),
            "process started long after the file"
        );
    }

    #[test]
    fn recorded_processes_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pods").join("ns_p_uid");
        std::fs::create_dir_all(&pod).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(pod.join("c.pid"), format!("{}\n", child.id())).unwrap();
        std::fs::write(pod.join("stale.pid"), "999999999\n").unwrap();
        assert_eq!(kill_recorded(dir.path()), 1);
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(!pod.join("c.pid").exists());
    }
}
