//! A handle on one process of a container: a pidfd, opened while the
//! process is known to be the one the shim started. A signal sent through
//! it reaches that process or nobody: once the process is reaped its pid
//! may be reused by anything on the node, and `kill(pid)` would hit that.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

#[derive(Debug)]
pub struct ProcessHandle {
    pid: i32,
    fd: OwnedFd,
}

/// What became of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The process has exited (maybe not reaped yet): nothing was signalled.
    Gone,
}

impl AsFd for ProcessHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl ProcessHandle {
    /// Opens a handle on `pid`. The caller must know that `pid` is still
    /// its process (not reaped since it learned the pid): see
    /// `Reaper::watch_with_handle`.
    pub fn open(pid: i32) -> io::Result<Self> {
        let p = Pid::from_raw(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
        let fd = pidfd_open(p, PidfdFlags::empty())?;
        Ok(ProcessHandle { pid, fd })
    }

    /// A handle from a pidfd opened elsewhere (see `ExitWatch::spawn`).
    pub fn from_fd(pid: i32, fd: OwnedFd) -> Self {
        ProcessHandle { pid, fd }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd itself, for whoever signals through it elsewhere.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends `signal` to the process, if it still runs.
    pub fn signal(&self, signal: i32) -> io::Result<Delivery> {
        let sig = Signal::from_named_raw(signal).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid signal {signal}"),
            )
        })?;
        match pidfd_send_signal(&self.fd, sig) {
            Ok(()) => Ok(Delivery::Delivered),
            Err(rustix::io::Errno::SRCH) => Ok(Delivery::Gone),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    fn sleeper() -> Child {
        Command::new("sleep").arg("100").spawn().unwrap()
    }

    /// Makes the next new process take `pid`, through ns_last_pid (root
    /// only); None when it could not be arranged.
    fn spawn_with_pid(pid: u32) -> Option<Child> {
        for _ in 0..50 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
            let mut c = sleeper();
            if c.id() == pid {
                return Some(c);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        None
    }

    #[test]
    fn a_signal_reaches_the_process() {
        let mut c = sleeper();
        let h = ProcessHandle::open(c.id() as i32).unwrap();
        assert_eq!(h.signal(libc::SIGKILL).unwrap(), Delivery::Delivered);
        c.wait().unwrap();
        assert_eq!(h.signal(libc::SIGKILL).unwrap(), Delivery::Gone);
        assert!(h.signal(12345).is_err());
    }

    /// Issue 14 item 4: the process exits and is reaped, another process
    /// takes its pid; a signal for the first never reaches the second.
    #[test]
    fn a_signal_never_reaches_a_process_that_took_the_pid() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("not root: cannot arrange a pid reuse; skipped");
            return;
        }
        let mut first = sleeper();
        let pid = first.id();
        let h = ProcessHandle::open(pid as i32).unwrap();
        first.kill().unwrap();
        first.wait().unwrap();
        let Some(mut second) = spawn_with_pid(pid) else {
            eprintln!("pid {pid} was taken by another process meanwhile; skipped");
            return;
        };
        let sent = h.signal(libc::SIGKILL);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let alive = second.try_wait().unwrap().is_none();
        let _ = second.kill();
        let _ = second.wait();
        assert!(
            alive,
            "the signal for pid {pid} killed the process that took the pid"
        );
        assert_eq!(sent.unwrap(), Delivery::Gone);
    }
}
