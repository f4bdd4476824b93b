//! Real writeback pressure for benchmarks: a background writer that keeps
//! gigabytes of dirty page cache on a filesystem, and a guard for the
//! `vm.dirty_*` sysctls.
//!
//! Both register what they changed in a process-wide list that is undone by
//! their `Drop`, by [`install_cleanup_hooks`]'s panic hook (release builds
//! abort on panic, so no `Drop` runs there) and by [`run_cleanup`]. SIGINT
//! and SIGTERM only raise a flag ([`interrupted`]) that the caller's loops
//! check, so that they unwind through the guards.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `vm.` sysctls that govern dirty page cache.
pub const DIRTY_SYSCTLS: &[&str] = &[
    "dirty_ratio",
    "dirty_background_ratio",
    "dirty_bytes",
    "dirty_background_bytes",
];

#[derive(Default)]
struct Registry {
    /// (sysctl name under /proc/sys/vm, value) to write back, in order.
    sysctls: Vec<(String, String)>,
    /// Directories holding writer files, to remove.
    dirs: Vec<PathBuf>,
    /// Stop flags of running writers.
    stops: Vec<Arc<AtomicBool>>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// True once SIGINT or SIGTERM arrived (after [`install_cleanup_hooks`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// A panic hook that restores the sysctls and removes the writer files
/// before the process aborts, and SIGINT/SIGTERM handlers that set
/// [`interrupted`].
pub fn install_cleanup_hooks() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        eprintln!("panic: restoring sysctls and removing writer files");
        run_cleanup_nonblocking();
    }));
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn write_sysctl(name: &str, value: &str) -> Result<()> {
    let p = Path::new("/proc/sys/vm").join(name);
    fs::write(&p, value).with_context(|| format!("write {} = {value}", p.display()))
}

pub fn read_sysctl(name: &str) -> Result<String> {
    let p = Path::new("/proc/sys/vm").join(name);
    Ok(fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

fn cleanup(reg: &mut Registry) {
    for s in reg.stops.drain(..) {
        s.store(true, Ordering::SeqCst);
    }
    for (name, value) in std::mem::take(&mut reg.sysctls) {
        if let Err(e) = write_sysctl(&name, &value) {
            eprintln!("restoring vm.{name}: {e:#}");
        }
    }
    for d in std::mem::take(&mut reg.dirs) {
        if let Err(e) = remove_writer_dir(&d) {
            eprintln!("removing {}: {e:#}", d.display());
        }
    }
}

/// Restore every registered sysctl and remove every registered writer
/// directory (idempotent).
pub fn run_cleanup() {
    with_registry(cleanup);
}

fn run_cleanup_nonblocking() {
    // The panicking thread may hold the lock: never wait for it.
    match REGISTRY.try_lock() {
        Ok(mut g) => cleanup(g.get_or_insert_with(Registry::default)),
        Err(std::sync::TryLockError::Poisoned(e)) => {
            cleanup(e.into_inner().get_or_insert_with(Registry::default))
        }
        Err(std::sync::TryLockError::WouldBlock) => {
            eprintln!("cleanup registry busy: restore vm.dirty_* and remove writer files by hand")
        }
    }
}

/// Only the files this module writes (`dirty-*.bin`), then the directory.
fn remove_writer_dir(d: &Path) -> Result<()> {
    let rd = match fs::read_dir(d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("dirty-") && name.ends_with(".bin") {
            fs::remove_file(e.path()).with_context(|| format!("rm {}", e.path().display()))?;
        }
    }
    match fs::remove_dir(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("rmdir {}", d.display())),
    }
}

/// Raises `vm.dirty_ratio` / `vm.dirty_background_ratio`; restores all four
/// `vm.dirty_*` values on drop (and on panic, see the module docs).
pub struct SysctlGuard {
    pub saved: Vec<(String, String)>,
}

impl SysctlGuard {
    pub fn raise(dirty_ratio: u32, background_ratio: u32) -> Result<Self> {
        let saved: Vec<(String, String)> = DIRTY_SYSCTLS
            .iter()
            .map(|n| Ok((n.to_string(), read_sysctl(n)?)))
            .collect::<Result<_>>()?;
        // Writing a ratio zeroes the matching *_bytes and the other way
        // round: write ratios first, then any non-zero bytes value.
        let mut restore: Vec<(String, String)> = saved
            .iter()
            .filter(|(n, _)| n.ends_with("_ratio"))
            .cloned()
            .collect();
        restore.extend(
            saved
                .iter()
                .filter(|(n, v)| n.ends_with("_bytes") && v != "0")
                .cloned(),
        );
        with_registry(|r| r.sysctls.extend(restore));
        write_sysctl("dirty_ratio", &dirty_ratio.to_string())?;
        write_sysctl("dirty_background_ratio", &background_ratio.to_string())?;
        Ok(SysctlGuard { saved })
    }

    pub fn restore(&mut self) {
        with_registry(|r| {
            for (name, value) in std::mem::take(&mut r.sysctls) {
                if let Err(e) = write_sysctl(&name, &value) {
                    eprintln!("restoring vm.{name}: {e:#}");
                }
            }
        });
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Current `vm.dirty_*` values as `name=value` pairs.
pub fn dirty_sysctls() -> String {
    DIRTY_SYSCTLS
        .iter()
        .map(|n| format!("{n}={}", read_sysctl(n).unwrap_or_else(|_| "?".into())))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fields of /proc/meminfo this module needs, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub dirty: u64,
    pub writeback: u64,
}

impl MemInfo {
    pub fn read() -> MemInfo {
        let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mut m = MemInfo::default();
        for l in text.lines() {
            let mut f = l.split_whitespace();
            let (Some(k), Some(v)) = (f.next(), f.next()) else {
                continue;
            };
            let v = v.parse::<u64>().unwrap_or(0) * 1024;
            match k {
                "MemTotal:" => m.total = v,
                "MemAvailable:" => m.available = v,
                "Dirty:" => m.dirty = v,
                "Writeback:" => m.writeback = v,
                _ => {}
            }
        }
        m
    }

    /// Dirty plus under writeback: what a sync of everything has to write.
    pub fn unwritten(&self) -> u64 {
        self.dirty + self.writeback
    }
}

/// Bytes available to unprivileged users on the filesystem holding `p`.
pub fn free_disk(p: &Path) -> Result<u64> {
    let c = CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: statvfs fills the zeroed struct; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statvfs {}", p.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// syncfs(2) on the filesystem holding `p`; returns how long it took.
pub fn syncfs(p: &Path) -> Result<Duration> {
    let f = File::open(p).with_context(|| format!("open {}", p.display()))?;
    let t = Instant::now();
    // SAFETY: a valid open fd.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs");
    }
    Ok(t.elapsed())
}

/// Poll /proc/meminfo until Dirty+Writeback is at most `below` bytes.
pub fn wait_unwritten_below(below: u64, timeout: Duration) -> MemInfo {
    let deadline = Instant::now() + timeout;
    loop {
        let m = MemInfo::read();
        if m.unwritten() <= below || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CHUNK: usize = 1 << 20;

/// A background writer that writes `target` bytes into `dir` with no fsync,
/// then keeps the system's Dirty+Writeback near `target` by appending more
/// (at most `topup_per_sec` bytes a second), wrapping around to the start of
/// its file at `max_file` bytes so the disk use stays bounded. Stops and
/// removes its files on [`DirtyWriter::stop`] or drop.
pub struct DirtyWriter {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    filled: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
    pub dir: PathBuf,
    pub file: PathBuf,
}

impl DirtyWriter {
    pub fn start(dir: &Path, target: u64, max_file: u64, topup_per_sec: u64) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        with_registry(|r| {
            if !r.dirs.iter().any(|d| d == dir) {
                r.dirs.push(dir.to_path_buf());
            }
            r.stops.push(stop.clone());
        });
        let file = dir.join(format!("dirty-{}.bin", std::process::id()));
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&file)
            .with_context(|| format!("create {}", file.display()))?;
        let written = Arc::new(AtomicU64::new(0));
        let filled = Arc::new(AtomicBool::new(false));
        let (s, w, fl) = (stop.clone(), written.clone(), filled.clone());
        let handle = std::thread::Builder::new()
            .name("dirty-writer".into())
            .spawn(move || {
                writer_loop(
                    f,
                    target,
                    max_file.max(CHUNK as u64),
                    topup_per_sec,
                    &s,
                    &w,
                    &fl,
                )
            })?;
        Ok(DirtyWriter {
            stop,
            written,
            filled,
            handle: Some(handle),
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// True once the first `target` bytes are written.
    pub fn filled(&self) -> bool {
        self.filled.load(Ordering::SeqCst)
    }

    /// Stop writing and remove the file (its dirty pages are dropped, not
    /// written back). Returns the writer's error, if it had one.
    pub fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let r = match self.handle.take() {
            Some(h) => h.join().unwrap_or_else(|_| Ok(())),
            None => Ok(()),
        };
        match fs::remove_file(&self.file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("rm {}: {e}", self.file.display()),
        }
        with_registry(|reg| reg.stops.retain(|s| !Arc::ptr_eq(s, &self.stop)));
        r
    }
}

impl Drop for DirtyWriter {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("dirty writer: {e:#}");
        }
    }
}

/// Remove a writer directory now and forget it (the registry would remove it
/// at the end anyway).
pub fn remove_writer_files(dir: &Path) -> Result<()> {
    with_registry(|r| r.dirs.retain(|d| d != dir));
    remove_writer_dir(dir)
}

fn writer_loop(
    mut f: File,
    target: u64,
    max_file: u64,
    topup_per_sec: u64,
    stop: &AtomicBool,
    written: &AtomicU64,
    filled: &AtomicBool,
) -> Result<()> {
    let buf = vec![0xa5u8; CHUNK];
    let mut offset = 0u64;
    let mut write_chunk = |f: &mut File| -> Result<()> {
        if offset + CHUNK as u64 > max_file {
            f.seek(SeekFrom::Start(0))?;
            offset = 0;
        }
        f.write_all(&buf).context("dirty writer")?;
        offset += CHUNK as u64;
        written.fetch_add(CHUNK as u64, Ordering::Relaxed);
        Ok(())
    };
    // Fill: as fast as the kernel lets us (balance_dirty_pages throttles).
    while written.load(Ordering::Relaxed) < target {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        write_chunk(&mut f)?;
    }
    filled.store(true, Ordering::SeqCst);
    // Keep it topped up, paced.
    let tick = Duration::from_millis(100);
    let per_tick = (topup_per_sec / 10).max(CHUNK as u64);
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let now = MemInfo::read().unwritten();
        if now < target {
            let mut n = (target - now).min(per_tick);
            while n > 0 && !stop.load(Ordering::SeqCst) {
                write_chunk(&mut f)?;
                n = n.saturating_sub(CHUNK as u64);
            }
        }
        std::thread::sleep(tick.saturating_sub(t.elapsed()));
    }
    Ok(())
}

/// Where a path lives: (mount point, fs type, source) of the longest mount
/// prefix of `p`, and its st_dev.
pub fn filesystem_of(p: &Path) -> Result<(PathBuf, String, String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .dev();
    let canon = fs::canonicalize(p)?;
    let m = crate::sys::mounts()
        .into_iter()
        .filter(|m| canon.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count());
    match m {
        Some(m) => Ok((m.mount_point, m.fs_type, m.source, dev)),
        None => bail!("no mount holds {}", p.display()),
    }
}
