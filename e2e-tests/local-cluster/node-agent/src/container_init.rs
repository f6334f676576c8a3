//! The first process of every container (`node-agent container-init`): enters the pod's
//! network namespace, takes a private mount and UTS namespace, bind-mounts the pod's hosts file
//! over /etc/hosts, sets the hostname, then execs the container's command.
//!
//! A separate exec (rather than a `pre_exec` hook in the agent) keeps the agent free of unsafe
//! code and of post-fork restrictions; the pid stays the same through the exec, so the agent's
//! child *is* the container process.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};

/// Sets up the namespaces and execs `argv`; returns only on failure.
pub fn run(
    netns: &Path,
    hosts: &Path,
    hostname: &str,
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
    nix::unistd::sethostname(hostname)
        .map_err(|e| Error::sys(format!("setting hostname {hostname:?}"), e))?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(Error::io(
        format!("exec {}", program.to_string_lossy()),
        err,
    ))
}
