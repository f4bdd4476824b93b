//! The shim's only `waitpid`: it reaps every child and orphan (the shim is a
//! subreaper) and hands each exit to whoever watches that pid.
//!
//! Container and exec processes are not our children when they start (runc
//! forks them), and they may exit before we learn their pid from runc's pid
//! file. Exits nobody watches yet are therefore kept for a while, and a watch
//! registered later still gets them. An exit older than the moment the
//! watched process was spawned belongs to an earlier process with the same
//! pid and is ignored.

use std::{
    collections::HashMap,
    io,
    process::Command,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use nix::{
    errno::Errno,
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use runc_wrapper::{ExitWatch, Spawned};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::process_handle::ProcessHandle;

/// How long an exit that nobody watched is kept.
const UNCLAIMED_TTL: Duration = Duration::from_secs(120);

/// One reaped process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// Exit code, or 128 + signal number.
    pub status: i32,
    pub at: SystemTime,
}

#[derive(Default)]
struct Table {
    watchers: HashMap<i32, (Instant, oneshot::Sender<Exit>)>,
    unclaimed: HashMap<i32, (Instant, Exit)>,
}

impl Table {
    fn watch(&mut self, pid: i32, since: Instant) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        match self.unclaimed.remove(&pid) {
            Some((reaped, exit)) if reaped >= since => {
                let _ = tx.send(exit);
            }
            _ => {
                self.watchers.insert(pid, (since, tx));
            }
        }
        rx
    }

    fn deliver(&mut self, exit: Exit) {
        let now = Instant::now();
        if let Some((_, tx)) = self.watchers.remove(&exit.pid) {
            let _ = tx.send(exit);
            return;
        }
        self.unclaimed
            .retain(|_, (at, _)| now.duration_since(*at) < UNCLAIMED_TTL);
        self.unclaimed.insert(exit.pid, (now, exit));
    }
}

/// The shim's reaper. Reaping (`waitpid`) and delivering an exit happen
/// under the table's lock, and so does opening a process handle in
/// [`Reaper::watch_with_handle`] and [`ExitWatch::spawn`]: a pid is never
/// reaped between the moment it is known to be ours and the moment its
/// handle is opened, so a handle never refers to a process that reused it.
#[derive(Default, Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD. Must run before the shim spawns anything.
    pub fn start() -> io::Result<Self> {
        let reaper = Reaper::default();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            // Reap once at start: children may have exited before the handler.
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reports the exit of `pid` through the returned receiver. `since` is
    /// when the process was spawned; exits reaped before it are stale.
    pub fn watch(&self, pid: i32, since: Instant) -> oneshot::Receiver<Exit> {
        self.lock().watch(pid, since)
    }

    /// [`Reaper::watch`], and a handle on the process to signal it by,
    /// unless it was reaped already (then its exit is in the receiver).
    pub fn watch_with_handle(
        &self,
        pid: i32,
        since: Instant,
    ) -> (oneshot::Receiver<Exit>, Option<ProcessHandle>) {
        let mut t = self.lock();
        // Reaped already: the pid may belong to someone else by now.
        let reaped = matches!(t.unclaimed.get(&pid), Some((at, _)) if *at >= since);
        let rx = t.watch(pid, since);
        let handle = (!reaped).then(|| ProcessHandle::open(pid).ok()).flatten();
        (rx, handle)
    }

    /// Forks a child that runs `child` and `_exit`s with the code it
    /// returns; the exit comes through the receiver. The fork and the watch
    /// happen under the table's lock, as in [`ExitWatch::spawn`], so the
    /// child cannot be reaped before it is watched.
    ///
    /// # Safety
    /// The child of a multi-threaded process may make only
    /// async-signal-safe calls: `child` must not allocate, lock, log, panic
    /// or touch the runtime.
    pub unsafe fn fork(
        &self,
        child: impl FnOnce() -> i32,
    ) -> io::Result<(i32, oneshot::Receiver<Exit>)> {
        let since = Instant::now();
        let mut t = self.lock();
        // SAFETY: the parent goes on as after any fork; the caller vouches
        // for what the child does.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                let code = child();
                // SAFETY: `_exit` runs no atexit handler or destructor: those
                // belong to the parent.
                unsafe { libc::_exit(code) }
            }
            pid => Ok((pid, t.watch(pid, since))),
        }
    }

    /// Drops interest in `pid`, e.g. when runc failed before the process ran.
    pub fn unwatch(&self, pid: i32) {
        self.lock().watchers.remove(&pid);
    }

    fn reap_all(&self) {
        loop {
            let mut t = self.lock();
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(other) => {
                    debug!(?other, "ignoring wait status");
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            t.deliver(Exit {
                pid: exit.0.as_raw(),
                status: exit.1,
                at: SystemTime::now(),
            });
        }
    }

    /// Hands an exit to whoever watches its pid, or keeps it for a watch
    /// to come.
    pub fn deliver(&self, exit: Exit) {
        self.lock().deliver(exit);
    }
}

impl ExitWatch for Reaper {
    fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let since = Instant::now();
        let (child, exit, pidfd) = {
            let mut t = self.lock();
            let child = cmd.spawn()?;
            let pid = child.id() as i32;
            let pidfd = ProcessHandle::open(pid).ok().map(ProcessHandle::into_fd);
            (child, t.watch(pid, since), pidfd)
        };
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            if let Ok(e) = exit.await {
                let _ = tx.send(e.status);
            }
        });
        Ok(Spawned {
            child,
            exit: rx,
            pidfd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32, status: i32) -> Exit {
        Exit {
            pid,
            status,
            at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn exit_before_watch_is_kept() {
        let r = Reaper::default();
        let since = Instant::now();
        r.deliver(exit(10, 3));
        let got = r.watch(10, since).await.unwrap();
        assert_eq!(got.status, 3);
    }

    #[tokio::test]
    async fn stale_exit_is_ignored() {
        let r = Reaper::default();
        r.deliver(exit(11, 1));
        let since = Instant::now() + Duration::from_millis(1);
        let mut rx = r.watch(11, since);
        assert!(rx.try_recv().is_err());
        r.deliver(exit(11, 0));
        assert_eq!(rx.await.unwrap().status, 0);
    }

    #[tokio::test]
    async fn watch_then_exit() {
        let r = Reaper::default();
        let rx = r.watch(12, Instant::now());
        r.deliver(exit(12, 137));
        assert_eq!(rx.await.unwrap().status, 137);
    }
}
