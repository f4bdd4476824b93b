//! How runc child processes are started and how their exit status is learned.
//!
//! A shim is a subreaper that reaps every child with `waitpid(-1)`. If this
//! crate also waited for runc by pid, the two waits would race and one of them
//! would get `ECHILD`, losing runc's exit status. So the wrapper never waits by
//! itself: an [`ExitWatch`] spawns the command and hands back a receiver that
//! the owner of the reaper completes.

use std::{
    io,
    os::fd::OwnedFd,
    process::{Child, Command},
    thread,
};

use tokio::sync::oneshot;

/// A started command.
pub struct Spawned {
    pub child: Child,
    /// Its exit status (the exit code, or 128 + signal for a signalled process).
    pub exit: oneshot::Receiver<i32>,
    /// A pidfd of the child, opened before anything could reap it; the
    /// wrapper kills a runc that timed out through it, never by pid (which
    /// the child may have left to another process by then). None where the
    /// kernel has no pidfds: then a timed-out runc is left running.
    pub pidfd: Option<OwnedFd>,
}

/// Spawns a command and reports its exit status through a channel.
pub trait ExitWatch: Send + Sync {
    /// Starts `cmd`. The implementation must register interest in the pid
    /// before the exit can be lost (for example by remembering exits of
    /// pids nobody watched yet), and open the pidfd before the child can be
    /// reaped.
    fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned>;
}

/// A pidfd of `pid`, which the caller knows is not reaped yet.
pub fn pidfd_of(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// An [`ExitWatch`] for processes that are not subreapers: a thread waits for
/// the child directly. Used by tools and tests that run outside a shim.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectWait;

impl ExitWatch for DirectWait {
    fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        use std::os::unix::process::ExitStatusExt;

        let child = cmd.spawn()?;
        // Nothing reaps the child before the thread below starts.
        let pidfd = pidfd_of(child.id());
        let pid = child.id() as libc::pid_t;
        let (tx, rx) = oneshot::channel();
        thread::spawn(move || {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid on our own child's pid with a valid pointer to a
            // local integer; the Child handle is never waited on elsewhere.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc == pid {
                let st = std::process::ExitStatus::from_raw(status);
                let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
                let _ = tx.send(code);
            }
        });
        Ok(Spawned {
            child,
            exit: rx,
            pidfd,
        })
    }
}
