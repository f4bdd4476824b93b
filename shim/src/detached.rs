//! Work a call starts and does not wait for: the unmount of a deleted
//! container's rootfs, and the `runc delete` of an exited container.
//!
//! Neither belongs on the path of a Task API call. An unmount can take
//! minutes under writeback pressure, and `runc delete` (a Go binary that
//! removes the container's cgroups and state) costs tens of milliseconds,
//! which containerd's CRI would otherwise wait for before it reports the
//! container EXITED. The work is still accounted for: the shim waits for it
//! (within a bound) before it exits, and a new container waits for any work
//! still running on the same id or paths, so it can neither collide with nor
//! be undone by its predecessor's cleanup.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

/// The count survives a panic elsewhere: a poisoned lock is still the count.
fn lock(m: &Mutex<Running>) -> std::sync::MutexGuard<'_, Running> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a piece of detached work touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkKey {
    /// A mount target or an overlay workdir.
    Path(PathBuf),
    /// runc's state of a container id (its early `runc delete`, the undo
    /// of a failed Create).
    Container(String),
    /// A runc call on a container id that went on detached after its
    /// caller had its answer (`runc_until_exit`, the kill at the exit).
    RuncCall(String),
}

#[derive(Debug, Default)]
struct Running {
    jobs: usize,
    /// How many running jobs hold each key.
    keys: HashMap<WorkKey, usize>,
}

#[derive(Debug, Default)]
struct Shared {
    running: Mutex<Running>,
    /// Signalled whenever a job ends.
    done: Notify,
}

/// The shim's count of running detached jobs, by what they touch.
#[derive(Debug, Default, Clone)]
pub struct Detached {
    shared: Arc<Shared>,
}

/// Held by a running job; dropping it (however the job ends) releases its
/// keys and wakes whoever waits.
#[must_use]
pub struct Job {
    shared: Arc<Shared>,
    keys: Vec<WorkKey>,
}

impl Detached {
    /// Registers a job touching `keys`.
    pub fn begin(&self, keys: Vec<WorkKey>) -> Job {
        let mut running = lock(&self.shared.running);
        running.jobs += 1;
        for k in &keys {
            *running.keys.entry(k.clone()).or_default() += 1;
        }
        drop(running);
        Job {
            shared: self.shared.clone(),
            keys,
        }
    }

    /// How many jobs are running.
    pub fn pending(&self) -> usize {
        lock(&self.shared.running).jobs
    }

    fn any_busy(&self, keys: &[WorkKey]) -> bool {
        let running = lock(&self.shared.running);
        keys.iter().any(|k| running.keys.contains_key(k))
    }

    /// Waits (within `bound`) until no running job touches `keys`. True when
    /// free.
    pub async fn wait_free(&self, keys: &[WorkKey], bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.shared.done.notified();
            if !self.any_busy(keys) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.any_busy(keys);
            }
        }
    }

    /// Waits until no job runs, or `bound` passes. Returns how many are
    /// still running.
    pub async fn wait_idle(&self, bound: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.shared.done.notified();
            if self.pending() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.pending();
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let mut running = lock(&self.shared.running);
        running.jobs -= 1;
        for k in &self.keys {
            if let Some(n) = running.keys.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    running.keys.remove(k);
                }
            }
        }
        drop(running);
        self.shared.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> WorkKey {
        WorkKey::Path(PathBuf::from(p))
    }

    #[tokio::test]
    async fn keys_are_busy_until_the_job_ends() {
        let d = Detached::default();
        let job = d.begin(vec![path("/a"), WorkKey::Container("c1".into())]);
        assert_eq!(d.pending(), 1);
        assert!(d.wait_free(&[path("/b")], Duration::ZERO).await);
        assert!(!d.wait_free(&[path("/a")], Duration::from_millis(10)).await);
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            d2.wait_free(&[WorkKey::Container("c1".into())], Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(job);
        assert!(waiter.await.unwrap());
        assert_eq!(d.wait_idle(Duration::ZERO).await, 0);
    }

    #[tokio::test]
    async fn shared_keys_stay_busy_until_every_holder_ends() {
        let d = Detached::default();
        let a = d.begin(vec![path("/x")]);
        let b = d.begin(vec![path("/x")]);
        drop(a);
        assert!(!d.wait_free(&[path("/x")], Duration::from_millis(10)).await);
        drop(b);
        assert!(d.wait_free(&[path("/x")], Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_job_without_keys_is_counted() {
        let d = Detached::default();
        let j = d.begin(Vec::new());
        assert_eq!(d.wait_idle(Duration::from_millis(10)).await, 1);
        drop(j);
        assert_eq!(d.wait_idle(Duration::ZERO).await, 0);
    }
}
