//! How runc child processes are started and how their exit status is learned.
//!
//! A shim is a subreaper that reaps every child with `waitpid(-1)`. If this
//! crate also waited for runc by pid, the two waits would race and one of them
//! would get `ECHILD`, losing runc's exit status. So the wrapper never waits by
//! itself: an [`ExitWatch`] spawns the command and hands back a receiver that
//! the owner of the reaper completes.

use std::{
    io,
    process::{Child, Command},
    thread,
};

use tokio::sync::oneshot;

/// Spawns a command and reports its exit status through a channel.
pub trait ExitWatch: Send + Sync {
    /// Starts `cmd` and returns the child with a receiver of its exit status
    /// (the exit code, or 128 + signal for a signalled process).
    ///
    /// The implementation must register interest in the pid before the exit
    /// can be lost, for example by remembering exits of pids nobody watched yet.
    fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<i32>)>;
}

/// An [`ExitWatch`] for processes that are not subreapers: a thread waits for
/// the child directly. Used by tools and tests that run outside a shim.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectWait;

impl ExitWatch for DirectWait {
    fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<i32>)> {
        use std::os::unix::process::ExitStatusExt;

        let child = cmd.spawn()?;
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
        Ok((child, rx))
    }
}
