//! Taking a rootfs down: the umount2 loop, run in a child process that
//! holds none of the shim's files (or in this process, for the `delete`
//! command), and the log line that says how it ended and how long it took.

use std::{
    ffi::{CStr, CString},
    os::unix::ffi::OsStrExt,
    path::Path,
    time::{Duration, Instant},
};

use nix::errno::Errno;
use tracing::{debug, info, warn};

use crate::{
    error::{Result, ShimError},
    reaper::Reaper,
};

/// Unmounts slower than this are logged as warnings.
const SLOW_UMOUNT: Duration = Duration::from_secs(1);

/// How long an unmount may find its target busy before it gives up.
const BUSY_FOR: Duration = Duration::from_secs(60);

/// How the unmount of a target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unmounted {
    /// Something was mounted there and is gone now.
    Done,
    /// Nothing was mounted there: containerd's own bundle cleanup may have
    /// unmounted it first.
    NothingThere,
    /// Still busy after [`BUSY_FOR`].
    Busy,
    Failed(Errno),
    /// The helper process ended otherwise (killed, or an errno too large
    /// for its exit code), with this status.
    Lost(i32),
}

/// Exit codes of the unmount helper; an errno `e` is `ERRNO_BASE + e`.
const EXIT_DONE: i32 = 0;
const EXIT_NOTHING_THERE: i32 = 1;
const EXIT_BUSY: i32 = 2;
const ERRNO_BASE: i32 = 3;
/// Exit codes from 128 on are taken by signals.
const ERRNO_MAX: i32 = 127 - ERRNO_BASE;

impl Unmounted {
    fn exit_code(self) -> i32 {
        match self {
            Unmounted::Done => EXIT_DONE,
            Unmounted::NothingThere => EXIT_NOTHING_THERE,
            Unmounted::Busy => EXIT_BUSY,
            Unmounted::Failed(e) if (e as i32) <= ERRNO_MAX => ERRNO_BASE + e as i32,
            Unmounted::Failed(_) | Unmounted::Lost(_) => 127,
        }
    }

    fn from_exit_code(code: i32) -> Self {
        match code {
            EXIT_DONE => Unmounted::Done,
            EXIT_NOTHING_THERE => Unmounted::NothingThere,
            EXIT_BUSY => Unmounted::Busy,
            c if (ERRNO_BASE..=ERRNO_BASE + ERRNO_MAX).contains(&c) && c != 127 => {
                Unmounted::Failed(Errno::from_raw(c - ERRNO_BASE))
            }
            c => Unmounted::Lost(c),
        }
    }
}

/// Detaches everything mounted on `target` (a lazy unmount, so no new
/// access can start) until the kernel says nothing is mounted there. Makes
/// only syscalls (no allocation, no lock, no log), so that a forked child
/// can run it.
fn detach_mounts(target: &CStr) -> Unmounted {
    let started = Instant::now();
    let mut unmounted = false;
    loop {
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
            unmounted = true;
            continue;
        }
        match Errno::last() {
            Errno::EINVAL | Errno::ENOENT if unmounted => return Unmounted::Done,
            Errno::EINVAL | Errno::ENOENT => return Unmounted::NothingThere,
            Errno::EINTR | Errno::EBUSY if started.elapsed() > BUSY_FOR => return Unmounted::Busy,
            Errno::EINTR | Errno::EBUSY => std::thread::sleep(Duration::from_millis(50)),
            e => return Unmounted::Failed(e),
        }
    }
}

fn c_path(target: &Path) -> Result<CString> {
    CString::new(target.as_os_str().as_bytes()).map_err(|_| ShimError::Mount {
        target: target.to_path_buf(),
        reason: "the path holds a NUL byte".into(),
    })
}

/// Unmounts everything on `target` in this process. A mount that is
/// already gone counts as done. Blocking.
pub fn unmount_all(target: &Path) -> Result<Duration> {
    let path = c_path(target)?;
    let started = Instant::now();
    let outcome = detach_mounts(&path);
    report(target, started.elapsed(), outcome)
}

/// [`unmount_all`] in a child process that holds none of the shim's files.
/// An unmount can block in the kernel for minutes (a sync under I/O
/// pressure), and a process ends only when its last thread does: were the
/// unmount a shim thread, a shim killed meanwhile would keep its sockets
/// open, containerd would not learn of its death, and its calls to the dead
/// shim (an Update under CRI's status lock among them) would hang until the
/// unmount ended. The child goes on alone and finishes the unmount. Blocking.
pub fn unmount_all_in_child(target: &Path, reaper: &Reaper) -> Result<Duration> {
    let path = c_path(target)?;
    let started = Instant::now();
    // SAFETY: the child closes its files, makes umount2, clock_gettime and
    // nanosleep calls and exits: all async-signal-safe, nothing allocated.
    let (pid, exit) = unsafe {
        reaper.fork(|| {
            close_all_files();
            detach_mounts(&path).exit_code()
        })
    }
    .map_err(|e| ShimError::io("fork the unmount helper", e))?;
    debug!(target = %target.display(), pid, "unmount helper started");
    let outcome = match exit.blocking_recv() {
        Ok(exit) => Unmounted::from_exit_code(exit.status),
        Err(_) => Unmounted::Lost(-1),
    };
    report(target, started.elapsed(), outcome)
}

/// Closes every file of the calling process (the unmount helper's copies
/// of the shim's sockets, pipes and pidfds). Async-signal-safe.
fn close_all_files() {
    // SAFETY: close_range takes no pointer; closing all is the point.
    if unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) } == 0 {
        return;
    }
    // Kernels before 5.9: one by one, up to the file limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as i32
    } else {
        1 << 16
    };
    for fd in 0..max {
        // SAFETY: closing a number that may not be open is harmless here.
        unsafe { libc::close(fd) };
    }
}

/// Logs how an unmount ended and how long it took.
fn report(target: &Path, took: Duration, outcome: Unmounted) -> Result<Duration> {
    let failed = |reason: String| ShimError::Mount {
        target: target.to_path_buf(),
        reason,
    };
    match outcome {
        // containerd's bundle cleanup got there first: nothing was ours to do.
        Unmounted::NothingThere => {
            info!(target = %target.display(), ?took, "rootfs already unmounted")
        }
        Unmounted::Done if took > SLOW_UMOUNT => {
            warn!(target = %target.display(), ?took, "slow rootfs unmount")
        }
        Unmounted::Done => info!(target = %target.display(), ?took, "rootfs unmounted"),
        Unmounted::Busy => return Err(failed(format!("still busy after {BUSY_FOR:?}"))),
        Unmounted::Failed(e) => return Err(failed(format!("umount: {e}"))),
        Unmounted::Lost(status) => {
            return Err(failed(format!(
                "the unmount helper ended with status {status} after {took:?}"
            )))
        }
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_of_nothing_is_done() {
        let dir = tempfile::tempdir().unwrap();
        unmount_all(dir.path()).unwrap();
        unmount_all(&dir.path().join("gone")).unwrap();
    }

    #[test]
    fn the_helpers_exit_code_says_how_it_ended() {
        for u in [
            Unmounted::Done,
            Unmounted::NothingThere,
            Unmounted::Busy,
            Unmounted::Failed(Errno::EPERM),
            Unmounted::Failed(Errno::EIO),
        ] {
            assert_eq!(Unmounted::from_exit_code(u.exit_code()), u);
        }
        // Killed, or an errno its exit code cannot carry: lost, not a success.
        assert_eq!(Unmounted::from_exit_code(137), Unmounted::Lost(137));
        assert!(matches!(
            Unmounted::from_exit_code(Unmounted::Failed(Errno::EHWPOISON).exit_code()),
            Unmounted::Lost(_)
        ));
    }

    /// The exit status of `pid`, reaped here: a test must not start the
    /// shim's reaper, whose waitpid(-1) would take other tests' children.
    fn reap(pid: i32) -> i32 {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("helper {pid}: {other:?}"),
        }
    }

    #[test]
    fn the_helper_finds_nothing_mounted_on_a_plain_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = c_path(dir.path()).unwrap();
        // SAFETY: the child makes only umount2 calls.
        let (pid, _) =
            unsafe { Reaper::default().fork(|| detach_mounts(&path).exit_code()) }.unwrap();
        assert_eq!(
            Unmounted::from_exit_code(reap(pid)),
            Unmounted::NothingThere
        );
    }

    /// The helper must hold no copy of the shim's sockets: a killed shim's
    /// sockets close only when every copy does.
    #[test]
    fn the_unmount_helper_holds_none_of_the_shims_files() {
        let (kept, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&kept);
        // SAFETY: the child makes only close_range/close and fcntl calls.
        let (pid, _) = unsafe {
            Reaper::default().fork(|| {
                close_all_files();
                i32::from(libc::fcntl(fd, libc::F_GETFD) != -1)
            })
        }
        .unwrap();
        assert_eq!(reap(pid), 0, "fd {fd} still open in the child");
    }
}
