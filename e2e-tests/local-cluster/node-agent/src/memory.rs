//! Memory limits without a memory cgroup: an RSS watchdog.
//!
//! This machine mounts cgroup v1 controllers (owned by the sandbox that runs us) and a cgroup v2
//! hierarchy with no memory controller, so `memory.max` is not available. The watchdog samples
//! /proc every 200 ms, sums the anonymous resident memory of every process in each container's
//! mount namespace (the whole process tree, orphans included) and SIGKILLs the container when
//! the sum exceeds `resources.limits.memory` — reported like the kernel's OOM kill
//! (`OOMKilled`, exit code 137). A spike shorter than one sample can slip through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::procfs;

/// Sampling period.
pub const PERIOD: Duration = Duration::from_millis(200);

struct Watch {
    limit: u64,
    mnt_ns: u64,
    oom: Arc<AtomicBool>,
    label: String,
}

/// The shared watchdog; containers register with [`MemoryWatchdog::watch`].
#[derive(Clone)]
pub struct MemoryWatchdog {
    inner: Arc<Mutex<HashMap<u64, Watch>>>,
    next_id: Arc<AtomicU64>,
}

/// Registration of one container; unregisters on drop.
pub struct WatchGuard {
    id: u64,
    oom: Arc<AtomicBool>,
    owner: MemoryWatchdog,
}

impl WatchGuard {
    /// True if the watchdog killed the container for exceeding its limit.
    pub fn oom_killed(&self) -> bool {
        self.oom.load(Ordering::SeqCst)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.owner.inner.lock() {
            map.remove(&self.id);
        }
    }
}

impl Default for MemoryWatchdog {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryWatchdog {
    /// A watchdog with nothing to watch.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Watches the container whose processes live in mount namespace `mnt_ns` against
    /// `limit` bytes. The caller keeps the namespace open (see `process::NsHandle`) for as long
    /// as the guard lives, so the inode identifies this container only.
    pub fn watch(&self, mnt_ns: u64, limit: u64, label: String) -> WatchGuard {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let oom = Arc::new(AtomicBool::new(false));
        if let Ok(mut map) = self.inner.lock() {
            map.insert(
                id,
                Watch {
                    limit,
                    mnt_ns,
                    oom: oom.clone(),
                    label,
                },
            );
        }
        WatchGuard {
            id,
            oom,
            owner: self.clone(),
        }
    }

    /// Samples until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let page = procfs::page_size();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            // /proc scans are blocking file reads: keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || this.sample(page)).await;
        }
    }

    /// One sample: usage per watched mount namespace, kills over-limit containers.
    pub fn sample(&self, page: u64) {
        let targets: Vec<(u64, u64, u64)> = {
            let Ok(map) = self.inner.lock() else { return };
            map.iter().map(|(id, w)| (*id, w.mnt_ns, w.limit)).collect()
        };
        if targets.is_empty() {
            return;
        }
        let mut usage: HashMap<u64, (u64, Vec<i32>)> = HashMap::new();
        let wanted: std::collections::HashSet<u64> = targets.iter().map(|t| t.1).collect();
        for pid in procfs::all_pids() {
            if let Some(ns) = procfs::ns_inode(pid, "mnt").filter(|ns| wanted.contains(ns)) {
                let slot = usage.entry(ns).or_default();
                slot.0 += procfs::anon_rss_bytes(pid, page);
                slot.1.push(pid);
            }
        }
        for (id, ns, limit) in targets {
            let Some((used, pids)) = usage.get(&ns) else {
                continue;
            };
            if *used <= limit {
                continue;
            }
            let label = {
                let Ok(map) = self.inner.lock() else { return };
                let Some(w) = map.get(&id) else { continue };
                w.oom.store(true, Ordering::SeqCst);
                w.label.clone()
            };
            warn!(container = %label, used_bytes = used, limit_bytes = limit, processes = pids.len(),
                  "memory limit exceeded, killing container (OOMKilled)");
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
