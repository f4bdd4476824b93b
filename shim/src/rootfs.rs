//! The container's root filesystem: mounting the mounts of a Create request
//! on `bundle/rootfs`, and taking them down again.

use std::{
    ffi::{CStr, CString},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_shim_protos::api::Mount;
use nix::{errno::Errno, mount::MsFlags};
use tracing::{debug, info, warn};

use crate::{
    detached::{Detached, WorkKey},
    error::{Result, ShimError},
    lowerdirs,
    platform::Platform,
    reaper::Reaper,
};

/// Unmounts slower than this are logged as warnings.
const SLOW_UMOUNT: Duration = Duration::from_secs(1);

/// Mounts `mounts` in order on `target`. Runs blocking syscalls: call it from
/// a blocking context.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| ShimError::Mount {
        target: target.to_path_buf(),
        reason: format!("create mount point: {e}"),
    })?;
    for m in mounts {
        let done = check_mount(m, target).and_then(|()| mount_one(m, target));
        if let Err(e) = done {
            // Leave nothing of a half-done rootfs behind.
            let _ = unmount_all(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Options that are mount flags rather than filesystem data: (name, flag, clears).
const FLAG_OPTIONS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, false),
    ("rw", MsFlags::MS_RDONLY, true),
    ("bind", MsFlags::MS_BIND, false),
    ("rbind", MsFlags::MS_BIND.union(MsFlags::MS_REC), false),
    ("nosuid", MsFlags::MS_NOSUID, false),
    ("suid", MsFlags::MS_NOSUID, true),
    ("nodev", MsFlags::MS_NODEV, false),
    ("dev", MsFlags::MS_NODEV, true),
    ("noexec", MsFlags::MS_NOEXEC, false),
    ("exec", MsFlags::MS_NOEXEC, true),
    ("sync", MsFlags::MS_SYNCHRONOUS, false),
    ("async", MsFlags::MS_SYNCHRONOUS, true),
    ("noatime", MsFlags::MS_NOATIME, false),
    ("atime", MsFlags::MS_NOATIME, true),
    ("nodiratime", MsFlags::MS_NODIRATIME, false),
    ("diratime", MsFlags::MS_NODIRATIME, true),
    ("relatime", MsFlags::MS_RELATIME, false),
    ("norelatime", MsFlags::MS_RELATIME, true),
    ("strictatime", MsFlags::MS_STRICTATIME, false),
    ("remount", MsFlags::MS_REMOUNT, false),
    ("defaults", MsFlags::empty(), false),
];

/// Splits mount options into flags and the comma-joined filesystem data.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match FLAG_OPTIONS.iter().find(|(name, _, _)| name == o) {
            Some((_, f, true)) => flags.remove(*f),
            Some((_, f, false)) => flags.insert(*f),
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let fs_type = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    let too_long = |data: &str, how: &str| ShimError::Mount {
        target: target.to_path_buf(),
        reason: format!(
            "{} mount options are {} bytes{how}, over the kernel's {}",
            m.type_,
            data.len(),
            lowerdirs::PAGE
        ),
    };
    // errno's name too ("EINVAL: Invalid argument"): what operators grep for.
    let failed = |options: String, e: std::io::Error| ShimError::Mount {
        target: target.to_path_buf(),
        reason: format!(
            "{} mount of {} with options {options}: {}",
            m.type_,
            m.source,
            e.raw_os_error().map_or_else(
                || e.to_string(),
                |n| nix::errno::Errno::from_raw(n).to_string()
            )
        ),
    };
    if m.type_ == "overlay" && data.len() >= lowerdirs::COMPACT_AT {
        // Many layers: lowerdirs relative to their common parent.
        let Some(c) = lowerdirs::compact(&data) else {
            return Err(too_long(
                &data,
                " and the lowerdirs share no parent to shorten them by",
            ));
        };
        if c.data.len() >= lowerdirs::PAGE {
            return Err(too_long(
                &c.data,
                &format!(" even with lowerdirs relative to {}", c.dir.display()),
            ));
        }
        // The mount runs with another working directory.
        let from = || format!("{:?} (from {})", c.data, c.dir.display());
        let target = std::path::absolute(target).map_err(|e| failed(from(), e))?;
        lowerdirs::mount_from(&c.dir, source, &target, fs_type, flags, &c.data)
            .map_err(|e| failed(from(), e))?;
        return Ok(());
    }
    if data.len() >= lowerdirs::PAGE {
        return Err(too_long(&data, ""));
    }
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(source, target, fs_type, flags, data_opt)
        .map_err(|e| failed(format!("{:?}", m.options), e.into()))?;
    // A read-only bind needs a remount to take effect.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| ShimError::Mount {
            target: target.to_path_buf(),
            reason: format!("read-only remount of bind mount {}: {e}", m.source),
        })?;
    }
    Ok(())
}

/// Catches the mistakes that would otherwise surface as a bare EINVAL.
fn check_mount(m: &Mount, target: &Path) -> Result<()> {
    let bad = |reason: String| ShimError::Mount {
        target: target.to_path_buf(),
        reason,
    };
    if m.type_ != "bind" && m.type_ != "overlay" && !filesystem_known(&m.type_) {
        return Err(bad(format!("unknown mount type {:?}", m.type_)));
    }
    if m.type_ == "bind" && !Path::new(&m.source).exists() {
        return Err(bad(format!("bind source {} does not exist", m.source)));
    }
    if m.type_ == "overlay" {
        for o in &m.options {
            for key in ["lowerdir=", "upperdir=", "workdir="] {
                if let Some(dirs) = o.strip_prefix(key) {
                    if let Some(missing) = dirs.split(':').find(|d| !Path::new(d).exists()) {
                        return Err(bad(format!("overlay {key}{missing} does not exist")));
                    }
                }
            }
        }
    }
    Ok(())
}

/// True when the kernel lists `fs_type` in /proc/filesystems.
fn filesystem_known(fs_type: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some(fs_type))
        })
        .unwrap_or(true)
}

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

/// A rootfs the shim mounted, owned until it is unmounted.
#[derive(Debug)]
pub struct MountedRootfs {
    pub target: PathBuf,
    /// Workdirs mounted volatile, whose markers go after a clean unmount.
    pub volatile_workdirs: Vec<PathBuf>,
}

/// The keys of detached work on a rootfs: its target and its volatile
/// workdirs (a new mount of the same snapshot needs both free).
pub fn work_keys(target: &Path, workdirs: &[PathBuf]) -> Vec<WorkKey> {
    std::iter::once(target)
        .chain(workdirs.iter().map(PathBuf::as_path))
        .map(|p| WorkKey::Path(p.to_path_buf()))
        .collect()
}

/// Starts the unmount of a deleted container's rootfs and returns at once.
/// The worker holds no lock: nothing another call needs can wait on it.
/// Failures are retried with a log line each, and logged as errors when
/// retries run out.
pub fn unmount_detached(
    work: &Detached,
    platform: Arc<dyn Platform>,
    id: String,
    rootfs: MountedRootfs,
) {
    let job = work.begin(work_keys(&rootfs.target, &rootfs.volatile_workdirs));
    tokio::task::spawn_blocking(move || {
        let _job = job;
        let mut attempt = 1;
        loop {
            match platform.unmount(&rootfs.target) {
                Ok(took) => {
                    crate::metrics::FIGURES.rootfs_unmounts.observe(took);
                    crate::volatile::clear_markers(&rootfs.volatile_workdirs);
                    break;
                }
                Err(e) if attempt < UNMOUNT_ATTEMPTS => {
                    warn!(id, attempt, error = %e, "rootfs unmount failed, retrying");
                    std::thread::sleep(Duration::from_secs(attempt as u64));
                    attempt += 1;
                }
                Err(e) => {
                    crate::metrics::inc(&crate::metrics::FIGURES.rootfs_unmount_failures);
                    tracing::error!(id, attempts = attempt, error = %e, "rootfs unmount failed for good; the mount is left in place");
                    break;
                }
            }
        }
    });
}

/// How often a failing unmount is tried before it is reported for good.
const UNMOUNT_ATTEMPTS: u32 = 5;

/// Where the rootfs of a bundle is mounted.
pub fn rootfs_of(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            type_: t.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_type_is_named() {
        let e = check_mount(&mount("nosuchfs", "x", &[]), Path::new("/t")).unwrap_err();
        assert!(
            e.to_string().contains("unknown mount type \"nosuchfs\""),
            "{e}"
        );
    }

    #[test]
    fn missing_overlay_dir_is_named() {
        let e = check_mount(
            &mount("overlay", "overlay", &["lowerdir=/nonexistent/l"]),
            Path::new("/t"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/l"), "{e}");
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "lowerdir=/a:/b", "volatile"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "lowerdir=/a:/b,volatile");
    }

    fn overlay_of(lowers: impl Iterator<Item = String>) -> Mount {
        let lower = format!("lowerdir={}", lowers.collect::<Vec<_>>().join(":"));
        mount("overlay", "overlay", &[&lower, "upperdir=/u", "workdir=/w"])
    }

    #[test]
    fn overlay_options_too_long_even_compacted_are_named() {
        let long = "y".repeat(100);
        let m = overlay_of((0..50).map(|i| format!("/snapshots/{long}{i}/fs")));
        let e = mount_one(&m, Path::new("/t")).unwrap_err().to_string();
        assert!(
            e.contains("even with lowerdirs relative to /snapshots") && e.contains("4096"),
            "{e}"
        );
    }

    #[test]
    fn overlay_options_too_long_without_common_parent_are_named() {
        let long = "z".repeat(100);
        let m = overlay_of((0..50).map(|i| format!("/{long}{i}/fs")));
        let e = mount_one(&m, Path::new("/t")).unwrap_err().to_string();
        assert!(e.contains("share no parent") && e.contains("4096"), "{e}");
    }

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
