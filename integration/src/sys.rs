//! Host inspection and cleanup helpers: processes (/proc), mounts
//! (/proc/self/mountinfo), cgroups (v1 hierarchies and the unified one) and
//! unix sockets. Nothing here kills by process name; callers pass the exact
//! pids or paths that belong to them.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// `name` as the shell finds it: itself when it holds a `/`, else the
/// first executable file of that name on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// All pids currently in /proc.
pub fn all_pids() -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids
}

/// The argv of a process; None if it is gone or is a kernel thread.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The resolved executable of a process.
pub fn exe(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; treat it as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => match s.rfind(')') {
            Some(i) => !s[i + 1..].trim_start().starts_with('Z'),
            None => true,
        },
        Err(_) => false,
    }
}

/// Parent pid of a process.
pub fn ppid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a thread of `pid`, or of one of its children, is inside umount2
/// now (as one held by strace's `delay_enter` is): the first field of
/// `/proc/TID/syscall` is the number of the syscall a blocked thread is in.
pub fn umount2_held_under(pid: i32) -> bool {
    let mut procs = vec![pid];
    procs.extend(all_pids().into_iter().filter(|&p| ppid(p) == Some(pid)));
    let umount2 = libc::SYS_umount2.to_string();
    procs.iter().any(|p| {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            return false;
        };
        tasks.flatten().any(|t| {
            fs::read_to_string(t.path().join("syscall"))
                .is_ok_and(|s| s.split_whitespace().next() == Some(umount2.as_str()))
        })
    })
}
/// The number after `key` in a `/proc/PID/*` file of `key: value [kB]` lines.
fn proc_field(pid: i32, file: &str, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size, KiB.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    proc_field(pid, "status", "VmRSS:")
}

/// The anonymous part of the resident set (heap, stacks), KiB: what grows
/// if a process leaks memory, unlike file pages of its binary, which it
/// touches bit by bit as new code paths run.
pub fn rss_anon_kib(pid: i32) -> Option<u64> {
    proc_field(pid, "status", "RssAnon:")
}

/// Proportional set size (shared pages divided among their users), KiB.
pub fn pss_kib(pid: i32) -> Option<u64> {
    proc_field(pid, "smaps_rollup", "Pss:")
}

/// Number of threads of a process.
pub fn threads(pid: i32) -> Option<u64> {
    proc_field(pid, "status", "Threads:")
}

/// Does this argv carry `-address <addr>` (or `--address`, `-address=addr`)?
pub fn argv_has_address(argv: &[String], address: &str) -> bool {
    argv.iter().enumerate().any(|(i, a)| {
        let flag = a.trim_start_matches('-');
        if a.starts_with('-') && flag == "address" {
            argv.get(i + 1).map(|v| v == address).unwrap_or(false)
        } else if a.starts_with('-') {
            flag.strip_prefix("address=") == Some(address)
        } else {
            false
        }
    })
}

/// Every process started by the containerd listening on `address` with
/// `-address <address>` on its command line: the long-running shims as well
/// as short-lived `shim start` / `shim delete` invocations.
pub fn processes_with_address(address: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| pid_alive(pid))
        .filter(|&pid| {
            cmdline(pid)
                .map(|argv| argv_has_address(&argv, address))
                .unwrap_or(false)
        })
        .collect()
}

/// Long-running shim daemons of the containerd at `address` (leaves out the
/// transient `start` and `delete` invocations).
pub fn shim_daemons(address: &str) -> Vec<i32> {
    processes_with_address(address)
        .into_iter()
        .filter(|&pid| {
            cmdline(pid)
                .and_then(|argv| argv.last().cloned())
                .map(|last| last != "start" && last != "delete")
                .unwrap_or(false)
        })
        .collect()
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: plain syscall on a pid we identified as ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A copy of file descriptor `fd` of process `pid` in this process
/// (`pidfd_getfd`, Linux 5.6; root). Holding a shim's listening socket this
/// way keeps it accepting connections after the shim is killed, as the
/// kernel does for a moment while a killed process releases its files:
/// its connections can be closed already while its listener is not.
pub fn copy_fd_of(pid: i32, fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd was just returned to this process and is owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, a fd number and flags; it returns a
    // new close-on-exec fd of this process or -1.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the new fd belongs to this process and to nothing else here.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as i32) })
}

/// Wait until none of `pids` is alive.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !pid_alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- mounts

#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut v = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || fields.len() < sep + 3 {
            continue;
        }
        v.push(MountInfo {
            mount_point: PathBuf::from(unescape_mount(fields[4])),
            fs_type: fields[sep + 1].to_string(),
            source: unescape_mount(fields[sep + 2]),
            options: fields
                .get(sep + 3)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        });
    }
    v
}

pub fn mounts() -> Vec<MountInfo> {
    parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Mounts at or below `dir`, and overlay mounts whose options name `dir`.
pub fn mounts_under(dir: &Path) -> Vec<MountInfo> {
    let dir_s = dir.to_string_lossy().to_string();
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir) || m.options.contains(&dir_s))
        .collect()
}

/// Lazily unmount everything at or below `dir`, deepest first.
pub fn umount_all_under(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for _round in 0..5 {
        let mut points: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(dir))
            .collect();
        if points.is_empty() {
            return errors;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: umount2 with a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINVAL)
                    && err.raw_os_error() != Some(libc::ENOENT)
                {
                    errors.push(format!("umount {}: {err}", p.display()));
                }
            }
        }
    }
    errors
}

/// Mount a tmpfs of `mib` MiB at `at` (mode 0711, nosuid, nodev).
pub fn mount_tmpfs(at: &Path, mib: u64) -> std::io::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())?;
    let data = CString::new(format!("size={mib}m,mode=0711"))?;
    // SAFETY: mount(2) with valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"brisk-it-tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmount `at` (not lazily: a busy mount stays and says so).
pub fn umount(at: &Path) -> std::io::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: umount2 with a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Remove a directory tree without crossing into other filesystems (a mount
/// left below it is never descended into).
pub fn remove_tree_same_fs(dir: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_rec(dir, meta.dev())
}

fn remove_rec(p: &Path, dev: u64) -> Result<()> {
    let meta = fs::symlink_metadata(p)?;
    if meta.is_dir() {
        if meta.dev() != dev {
            bail!(
                "refusing to remove {}: another filesystem is mounted there",
                p.display()
            );
        }
        for e in fs::read_dir(p)? {
            remove_rec(&e?.path(), dev)?;
        }
        fs::remove_dir(p).with_context(|| format!("rmdir {}", p.display()))?;
    } else {
        fs::remove_file(p).with_context(|| format!("rm {}", p.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- cgroups

/// Mount points of every cgroup hierarchy (v1 controllers, named v1
/// hierarchies and the unified v2 one).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    mounts()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// `<root>/<parent>` in every hierarchy where it exists.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Every cgroup directory below `dir` (not `dir` itself), deepest first.
pub fn cgroup_children(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let p = e.path();
                    walk(&p, out);
                    out.push(p);
                }
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// Pids in a cgroup directory and all of its descendants.
pub fn cgroup_tree_pids(dir: &Path) -> Vec<i32> {
    let mut pids = BTreeSet::new();
    let mut dirs = cgroup_children(dir);
    dirs.push(dir.to_path_buf());
    for d in dirs {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids.into_iter().collect()
}

/// Kill every process in our cgroup tree (in all hierarchies), thaw frozen
/// cgroups so the kill can land, then remove the directories deepest first,
/// the parent itself last when `remove_parent`.
pub fn destroy_cgroup_tree(parent: &str, remove_parent: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let dirs = cgroup_dirs(parent);
    for _ in 0..100 {
        let mut any = false;
        for d in &dirs {
            for pid in cgroup_tree_pids(d) {
                any = true;
                kill(pid, libc::SIGKILL);
            }
            // A frozen process cannot die: thaw.
            let mut fdirs = cgroup_children(d);
            fdirs.push(d.clone());
            for f in fdirs {
                let st = f.join("freezer.state");
                if fs::read_to_string(&st)
                    .map(|s| s.trim() != "THAWED")
                    .unwrap_or(false)
                {
                    let _ = fs::write(&st, "THAWED");
                }
            }
        }
        if !any {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    for d in &dirs {
        let mut victims = cgroup_children(d);
        if remove_parent {
            victims.push(d.clone());
        }
        for v in victims {
            let mut last = None;
            for _ in 0..50 {
                match fs::remove_dir(&v) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            if let Some(e) = last {
                errors.push(format!("rmdir {}: {e}", v.display()));
            }
        }
    }
    errors
}

/// Find a cgroup file for a container: `<root>/<parent>/<id>/<file>` in the
/// hierarchy that has `file`.
pub fn cgroup_file(parent: &str, id: &str, file: &str) -> Option<PathBuf> {
    cgroup_dirs(parent)
        .into_iter()
        .map(|d| d.join(id).join(file))
        .find(|p| p.exists())
}

/// True when `/sys/fs/cgroup` is the cgroup v2 unified hierarchy (no v1
/// controllers mounted below it).
pub fn cgroup_v2_unified() -> bool {
    mounts()
        .iter()
        .any(|m| m.mount_point == Path::new("/sys/fs/cgroup") && m.fs_type == "cgroup2")
}

/// True when systemd is the init system (its `sd_booted` test).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `systemctl ARGS...` (30 s at most).
pub fn systemctl(args: &[&str]) -> Result<Output> {
    run_with_timeout(
        Command::new("systemctl").args(args),
        Duration::from_secs(30),
    )
}

/// A loaded systemd unit: its name, ACTIVE and SUB states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub active: String,
    pub sub: String,
}

/// Parse `systemctl list-units --all --plain --no-legend --full` lines
/// (`UNIT LOAD ACTIVE SUB DESCRIPTION...`).
pub fn parse_list_units(text: &str) -> Vec<Unit> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.trim_start_matches('●').to_string();
            let name = if name.is_empty() {
                f.next()?.to_string()
            } else {
                name
            };
            let _load = f.next()?;
            Some(Unit {
                name,
                active: f.next()?.to_string(),
                sub: f.next()?.to_string(),
            })
        })
        .collect()
}

/// The loaded units (any state, failed ones too) whose names match one of
/// `patterns` (systemctl's globs).
pub fn systemd_units(patterns: &[&str]) -> Result<Vec<Unit>> {
    let mut args = vec![
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--full",
        "--no-pager",
    ];
    args.extend_from_slice(patterns);
    let out = systemctl(&args)?;
    if !out.status.success() {
        bail!(
            "systemctl list-units: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_list_units(&String::from_utf8_lossy(&out.stdout)))
}

/// Stop `units` and forget their failures; units that are not loaded are
/// no error. Returns the problems met.
pub fn systemd_stop_units(units: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    if units.is_empty() {
        return errors;
    }
    // Blocking: when it returns, the units' processes and cgroups are gone.
    let mut args = vec!["stop"];
    args.extend(units.iter().map(String::as_str));
    match systemctl(&args) {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            // "Unit X not loaded." is what we want anyway.
            let real: Vec<&str> = err
                .lines()
                .filter(|l| !l.contains("not loaded"))
                .filter(|l| !l.trim().is_empty())
                .collect();
            if !real.is_empty() {
                errors.push(format!("systemctl stop {units:?}: {}", real.join("; ")));
            }
        }
        Err(e) => errors.push(format!("systemctl stop {units:?}: {e:#}")),
    }
    let mut args = vec!["reset-failed"];
    args.extend(units.iter().map(String::as_str));
    // Fails for units that are not loaded or did not fail: nothing to forget.
    let _ = systemctl(&args);
    errors
}

// ---------------------------------------------------------------- sockets

/// inode -> path of the named unix sockets in the network namespace of `pid`.
fn unix_socket_paths(pid: i32) -> HashMap<u64, PathBuf> {
    let mut m = HashMap::new();
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/unix")) else {
        return m;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8 {
            if let Ok(inode) = f[6].parse::<u64>() {
                let path = f[7].trim_start_matches('@');
                if f[7].starts_with('/') {
                    m.insert(inode, PathBuf::from(path));
                }
            }
        }
    }
    m
}

/// Paths of the named unix sockets that process `pid` holds open.
pub fn unix_sockets_of(pid: i32) -> Vec<PathBuf> {
    let names = unix_socket_paths(pid);
    let mut out = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Some(p) = inode.parse::<u64>().ok().and_then(|i| names.get(&i)) {
                        out.insert(p.clone());
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// `unix:///run/containerd/s/xyz` or a plain path -> path.
pub fn socket_path_from_address(addr: &str) -> Option<PathBuf> {
    let a = addr.trim();
    let a = a.strip_prefix("unix://").unwrap_or(a);
    if a.starts_with('/') {
        Some(PathBuf::from(a))
    } else {
        None
    }
}

// ---------------------------------------------------------------- commands

/// Run a command with a deadline; kill it (by its pid) when the deadline
/// passes. stdin is closed.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child: Child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => Ok(r?),
        Err(_) => {
            kill(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(anyhow!("{cmd:?} timed out after {timeout:?}"))
        }
    }
}

/// Read a child's pipe to its end in a thread (so that the child never
/// blocks on a full pipe while the caller does something else).
pub fn read_in_background<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Last `n` lines of a file.
pub fn tail_file(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let t = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - overlay overlay rw,lowerdir=/a,upperdir=/b\n\
                 40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fs_type, "overlay");
        assert!(m[0].options.contains("upperdir=/b"));
        assert_eq!(m[1].fs_type, "cgroup");
    }

    #[test]
    fn address_flag_forms() {
        let argv: Vec<String> = [
            "shim",
            "-namespace",
            "k8s.io",
            "-address",
            "/tmp/x.sock",
            "-id",
            "a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(argv_has_address(&argv, "/tmp/x.sock"));
        assert!(!argv_has_address(&argv, "/tmp/y.sock"));
        let argv2 = vec!["shim".to_string(), "--address=/tmp/x.sock".to_string()];
        assert!(argv_has_address(&argv2, "/tmp/x.sock"));
    }

    #[test]
    fn list_units_lines() {
        let t = "cri-containerd-abc.scope loaded active running libcontainer container abc\n\
                 \u{25cf} brisk_it_1_0.slice loaded failed failed brisk_it_1_0.slice\n";
        let u = parse_list_units(t);
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].name, "cri-containerd-abc.scope");
        assert_eq!(
            (u[0].active.as_str(), u[0].sub.as_str()),
            ("active", "running")
        );
        assert_eq!(u[1].name, "brisk_it_1_0.slice");
        assert_eq!(u[1].active, "failed");
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            socket_path_from_address("unix:///run/containerd/s/abc\n"),
            Some(PathBuf::from("/run/containerd/s/abc"))
        );
        assert_eq!(socket_path_from_address("ttrpc+vsock://1:2"), None);
    }
}
