//! OOM kills of a container, each published once, none lost.
//!
//! The truth is the kernel's `oom_kill` counter of the container's memory
//! cgroup (`memory.events` on v2, `memory.oom_control` on v1): every kill
//! the counter gained since the last look is one TaskOOM. The kernel wakes
//! the watch when the counter may have moved (inotify on `memory.events`,
//! which v2 signals as modified; the eventfd of `cgroup.event_control` on
//! v1), so an idle container costs no wake-ups. A wake-up can still come
//! too late: the early `runc delete` at an exit removes the cgroup within
//! milliseconds. So the exit path also calls [`OomWatch::flush`] before it
//! publishes a TaskExit, while the cgroup still exists, and a kill is
//! told before the exit it caused.
//!
//! With the systemd driver even that can be too late: systemd removes a
//! container's scope as soon as its last process is gone, racing the
//! shim's read, and an init that was the scope's only process takes its
//! counter with it. On v2 the counters are hierarchical, so the pod's
//! cgroup (the parent) counted the kill too: a `PodLedger` keeps how many
//! of the parent's kills the pod's containers have told, and a container
//! whose own counter is gone when its init's SIGKILL exit is published
//! tells one kill if the parent has one nobody told.

use std::{
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info};

use super::{
    pod_ledger::{PodLedger, PodLedgers},
    read_oom_kills, ContainerCgroup,
};

/// Watches one container's cgroup for OOM kills until dropped.
pub struct OomWatch {
    counter: Arc<Counter>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for OomWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OomWatch")
            .field("file", &self.counter.file)
            .finish()
    }
}

struct Counter {
    file: PathBuf,
    /// Kills already published, and whether the ledger already told the
    /// one kill it may tell for this container.
    seen: Mutex<(u64, bool)>,
    ledger: Option<Arc<PodLedger>>,
    on_oom: Box<dyn Fn() + Send + Sync>,
}

impl Counter {
    /// Publishes the kills the counter gained since the last look. When the
    /// counter is gone and `init_killed` (the init's SIGKILL exit is about
    /// to be published), asks the pod's ledger for an untold kill.
    fn check(&self, init_killed: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let Some(now) = read_oom_kills(&self.file) else {
            debug!(file = %self.file.display(), "OOM kill counter unreadable (cgroup gone?)");
            if init_killed && !seen.1 {
                seen.1 = true;
                if self.ledger.as_ref().is_some_and(|l| l.take_untold()) {
                    info!(file = %self.file.display(), "cgroup gone before its OOM kill was read; the pod's cgroup counted it");
                    (self.on_oom)();
                }
            }
            return;
        };
        let new = now.saturating_sub(seen.0);
        for _ in 0..new {
            (self.on_oom)();
        }
        seen.0 = seen.0.max(now);
        if let Some(l) = &self.ledger {
            l.told(new);
        }
    }
}

impl OomWatch {
    /// Starts watching a container's memory cgroup (right after `runc
    /// create`, before the container runs), calling `on_oom` once per kill.
    /// None when it cannot be watched (said in the log).
    pub fn start(
        cg: &ContainerCgroup,
        ledgers: &PodLedgers,
        on_oom: impl Fn() + Send + Sync + 'static,
    ) -> Option<OomWatch> {
        let (file, wake) = if cg.unified {
            let file = cg.dir.join("memory.events");
            (file.clone(), Wake::inotify(&file))
        } else {
            (cg.dir.join("memory.oom_control"), Wake::eventfd(&cg.dir))
        };
        let wake = match wake {
            Ok(w) => w,
            Err(e) => {
                info!(file = %file.display(), error = %e, "no OOM notifications for container");
                return None;
            }
        };
        let seen = read_oom_kills(&file).unwrap_or(0);
        debug!(file = %file.display(), kills = seen, "watching OOM kills");
        let counter = Arc::new(Counter {
            file,
            seen: Mutex::new((seen, false)),
            ledger: ledgers.of(cg),
            on_oom: Box::new(on_oom),
        });
        let task = tokio::spawn(watch(wake, counter.clone()));
        Some(OomWatch { counter, task })
    }

    /// Publishes, now, every kill not yet told. Cheap (one small file read).
    /// `init_killed`: the init's exit by SIGKILL is about to be told.
    pub fn flush(&self, init_killed: bool) {
        self.counter.check(init_killed);
    }
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// nix's inotify, with the raw fd tokio's reactor wants.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers `inner` with tokio's reactor.
fn register<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd and keeps it open for as long as the
    // AsyncFd that takes it lives, which is what register requires.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}

/// What the kernel signals when the counter may have changed.
enum Wake {
    Inotify(AsyncFd<InotifyFd>),
    /// The eventfd, and the memory cgroup directory (the eventfd also fires
    /// when the cgroup is removed).
    EventFd(AsyncFd<OwnedFd>, PathBuf),
}

impl Wake {
    fn inotify(file: &Path) -> std::io::Result<Wake> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        ino.add_watch(file, AddWatchFlags::IN_MODIFY)?;
        Ok(Wake::Inotify(register(InotifyFd(ino))?))
    }

    /// v1: an eventfd registered on memory.oom_control through
    /// cgroup.event_control.
    fn eventfd(dir: &Path) -> std::io::Result<Wake> {
        let oom_control = std::fs::File::open(dir.join("memory.oom_control"))?;
        // SAFETY: eventfd(2) with valid flags; the returned fd is owned right away.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: efd was just created by eventfd above and nothing else owns it.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        std::fs::write(
            dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd()),
        )?;
        Ok(Wake::EventFd(register(efd)?, dir.to_path_buf()))
    }

    /// Waits for the next signal; false once the cgroup is gone.
    async fn next(&self) -> std::io::Result<bool> {
        match self {
            Wake::Inotify(fd) => loop {
                let mut guard = fd.readable().await?;
                match fd.get_ref().0.read_events() {
                    Ok(events) => {
                        let gone = events
                            .iter()
                            .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED));
                        return Ok(!gone);
                    }
                    Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            },
            Wake::EventFd(fd, dir) => loop {
                let mut guard = fd.readable().await?;
                let mut buf = [0u8; 8];
                // SAFETY: reading 8 bytes into an 8-byte stack buffer from our eventfd.
                let n = unsafe { libc::read(fd.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    if err.kind() == std::io::ErrorKind::WouldBlock {
                        guard.clear_ready();
                        continue;
                    }
                    return Err(err);
                }
                return Ok(dir.exists());
            },
        }
    }
}

async fn watch(wake: Wake, counter: Arc<Counter>) {
    loop {
        let alive = wake.next().await;
        counter.check(false);
        match alive {
            Ok(true) => {}
            Ok(false) => {
                debug!(file = %counter.file.display(), "memory cgroup removed, OOM watch ends");
                return;
            }
            Err(e) => {
                info!(file = %counter.file.display(), error = %e, "OOM watch ends");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use tokio::sync::Notify;

    use super::*;

    fn counter(file: PathBuf, seen: u64) -> (Arc<Counter>, Arc<AtomicUsize>, Arc<Notify>) {
        let told = Arc::new(AtomicUsize::new(0));
        let woken = Arc::new(Notify::new());
        let (t, w) = (told.clone(), woken.clone());
        let c = Arc::new(Counter {
            file,
            seen: Mutex::new((seen, false)),
            ledger: None,
            on_oom: Box::new(move || {
                t.fetch_add(1, Ordering::SeqCst);
                w.notify_one();
            }),
        });
        (c, told, woken)
    }

    #[test]
    fn each_kill_is_told_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "oom 0\noom_kill 0\n").unwrap();
        let (c, told, _) = counter(file.clone(), 0);
        c.check(false);
        assert_eq!(told.load(Ordering::SeqCst), 0);
        std::fs::write(&file, "oom 3\noom_kill 2\n").unwrap();
        c.check(false);
        c.check(false);
        assert_eq!(told.load(Ordering::SeqCst), 2);
        std::fs::write(&file, "oom 3\noom_kill 3\n").unwrap();
        c.check(false);
        assert_eq!(told.load(Ordering::SeqCst), 3);
        // The cgroup is gone: nothing more, nothing less.
        std::fs::remove_file(&file).unwrap();
        c.check(false);
        assert_eq!(told.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn inotify_wakes_on_a_change_and_ends_when_the_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "oom_kill 0\n").unwrap();
        let (c, told, woken) = counter(file.clone(), 0);
        let task = tokio::spawn(watch(Wake::inotify(&file).unwrap(), c));
        std::fs::write(&file, "oom_kill 1\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), woken.notified())
            .await
            .expect("woken by inotify");
        std::fs::remove_file(&file).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watch ends with its file")
            .unwrap();
        assert_eq!(told.load(Ordering::SeqCst), 1);
    }
}

#[cfg(test)]
mod ledger_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A pod cgroup with two containers, as files only.
    struct Pod {
        dir: tempfile::TempDir,
    }

    impl Pod {
        fn new() -> Pod {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("memory.events"), "oom_kill 5\n").unwrap();
            for c in ["a", "b"] {
                std::fs::create_dir(dir.path().join(c)).unwrap();
                std::fs::write(dir.path().join(c).join("memory.events"), "oom_kill 0\n").unwrap();
            }
            Pod { dir }
        }

        fn set(&self, rel: &str, kills: u64) {
            std::fs::write(
                self.dir.path().join(rel).join("memory.events"),
                format!("oom_kill {kills}\n"),
            )
            .unwrap();
        }

        fn counter(&self, ledgers: &PodLedgers, c: &str) -> (Counter, Arc<AtomicUsize>) {
            let cg = ContainerCgroup {
                dir: self.dir.path().join(c),
                unified: true,
            };
            let told = Arc::new(AtomicUsize::new(0));
            let t = told.clone();
            let counter = Counter {
                file: cg.dir.join("memory.events"),
                seen: Mutex::new((0, false)),
                ledger: ledgers.of(&cg),
                on_oom: Box::new(move || {
                    t.fetch_add(1, Ordering::SeqCst);
                }),
            };
            (counter, told)
        }
    }

    #[test]
    fn a_kill_whose_cgroup_is_gone_is_told_from_the_pods_counter_once() {
        let pod = Pod::new();
        let ledgers = PodLedgers::default();
        let (a, told_a) = pod.counter(&ledgers, "a");
        let (b, told_b) = pod.counter(&ledgers, "b");
        // b is OOM-killed and reads its own counter: told once, by b.
        pod.set("b", 1);
        pod.set("", 6);
        b.check(false);
        assert_eq!(told_b.load(Ordering::SeqCst), 1);
        // a's init is OOM-killed and systemd removes a's scope first.
        pod.set("", 7);
        std::fs::remove_dir_all(pod.dir.path().join("a")).unwrap();
        a.check(false);
        assert_eq!(
            told_a.load(Ordering::SeqCst),
            0,
            "not without the init's SIGKILL"
        );
        a.check(true);
        a.check(true);
        assert_eq!(
            told_a.load(Ordering::SeqCst),
            1,
            "the pod's kill nobody told"
        );
        assert_eq!(told_b.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_sigkill_without_an_untold_kill_in_the_pod_is_no_oom() {
        let pod = Pod::new();
        let ledgers = PodLedgers::default();
        let (a, told_a) = pod.counter(&ledgers, "a");
        let (b, told_b) = pod.counter(&ledgers, "b");
        pod.set("b", 1);
        pod.set("", 6);
        b.check(false);
        // a is killed by a user (SIGKILL, no OOM) and its scope goes.
        std::fs::remove_dir_all(pod.dir.path().join("a")).unwrap();
        a.check(true);
        assert_eq!(told_a.load(Ordering::SeqCst), 0);
        assert_eq!(told_b.load(Ordering::SeqCst), 1);
    }
}
