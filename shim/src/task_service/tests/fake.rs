//! The fake machine: a runc that keeps container states in memory and can
//! fail or hold any subcommand, and mounts that are a set of targets.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use containerd_shim_protos::api::Mount;
use runc_wrapper::{CreateOpts, ExecOpts, RuncApi, RuncError};
use tokio::sync::watch;

use super::within;
use crate::{
    config::RuntimeConfig,
    error::{Result, ShimError},
    exited_teardown::Teardown,
    platform::Platform,
    volatile,
};

/// Fake pids lie above the kernel's pid_max, so no real process has them.
const FIRST_PID: i32 = 1 << 23;

/// What a fake runc call does besides succeeding.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fail with this message.
    Fail(&'static str),
    /// `create`: set up the container, then fail (runc may leave state).
    FailLeavingState,
    /// `create` or `exec`: succeed without writing the pid file.
    NoPidFile,
    /// Panic inside the call (a bug somewhere below the service).
    Panic,
}

/// A subcommand held by the test: calls wait in it until released.
#[derive(Debug)]
pub struct Gate {
    entered: watch::Sender<usize>,
    open: watch::Sender<bool>,
}

impl Gate {
    /// Waits until `n` calls have entered the gate.
    pub async fn entered(&self, n: usize) {
        let mut rx = self.entered.subscribe();
        within(rx.wait_for(|&e| e >= n)).await.unwrap();
    }

    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

#[derive(Debug, Default)]
struct RuncState {
    /// Containers runc has state of, with their status.
    containers: HashMap<String, &'static str>,
    /// Every call, as "subcommand id".
    log: Vec<String>,
    faults: HashMap<&'static str, Vec<Fault>>,
    gates: HashMap<&'static str, Arc<Gate>>,
    next_pid: i32,
    /// The resources JSON of every `update`, as runc read it from stdin.
    updates: Vec<serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct FakeRunc {
    state: Mutex<RuncState>,
}

impl FakeRunc {
    /// The next `times` calls of `sub` meet `fault`.
    pub fn fault(&self, sub: &'static str, fault: Fault, times: usize) {
        let mut s = self.state.lock().unwrap();
        s.faults
            .entry(sub)
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Calls of `sub` wait until the gate is released.
    pub fn hold(&self, sub: &'static str) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            entered: watch::channel(0).0,
            open: watch::channel(false).0,
        });
        self.state.lock().unwrap().gates.insert(sub, gate.clone());
        gate
    }

    pub fn has_state(&self, id: &str) -> bool {
        self.state.lock().unwrap().containers.contains_key(id)
    }

    /// The shim removed `id`'s state itself, with no runc call.
    fn forget(&self, id: &str) {
        self.state.lock().unwrap().containers.remove(id);
    }

    /// How many calls were "sub id".
    pub fn calls(&self, sub: &str, id: &str) -> usize {
        let call = format!("{sub} {id}");
        let s = self.state.lock().unwrap();
        s.log.iter().filter(|c| **c == call).count()
    }

    /// The resources of every `update` so far, as runc received them.
    pub fn updates(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().updates.clone()
    }

    fn new_pid(&self) -> i32 {
        let mut s = self.state.lock().unwrap();
        s.next_pid += 1;
        FIRST_PID + s.next_pid
    }

    /// Records the call, waits at its gate, and returns its fault.
    async fn enter(&self, sub: &'static str, id: &str) -> Option<Fault> {
        let gate = {
            let mut s = self.state.lock().unwrap();
            s.log.push(format!("{sub} {id}"));
            s.gates.get(sub).cloned()
        };
        if let Some(g) = gate {
            g.entered.send_modify(|n| *n += 1);
            let mut open = g.open.subscribe();
            let _ = open.wait_for(|&o| o).await;
        }
        let fault = {
            let mut s = self.state.lock().unwrap();
            let faults = s.faults.get_mut(sub)?;
            (!faults.is_empty()).then(|| faults.remove(0))
        };
        if let Some(Fault::Panic) = fault {
            panic!("injected panic in runc {sub} {id}");
        }
        fault
    }

    fn exists(&self, sub: &str, id: &str) -> runc_wrapper::Result<()> {
        if self.has_state(id) {
            Ok(())
        } else {
            Err(failed(sub, "container does not exist"))
        }
    }

    fn set(&self, id: &str, status: &'static str) {
        let mut s = self.state.lock().unwrap();
        s.containers.insert(id.to_string(), status);
    }

    /// A call that only needs the container to exist.
    async fn simple(&self, sub: &'static str, id: &str) -> runc_wrapper::Result<()> {
        if let Some(Fault::Fail(m)) = self.enter(sub, id).await {
            return Err(failed(sub, m));
        }
        self.exists(sub, id)
    }
}

fn failed(command: &str, message: &str) -> RuncError {
    RuncError::failed(command, 1, message.into())
}

#[async_trait]
impl RuncApi for FakeRunc {
    async fn create(&self, id: &str, _bundle: &Path, opts: CreateOpts) -> runc_wrapper::Result<()> {
        match self.enter("create", id).await {
            Some(Fault::Fail(m)) => return Err(failed("create", m)),
            Some(Fault::FailLeavingState) => {
                self.set(id, "created");
                return Err(failed("create", "container_linux.go: cannot start"));
            }
            Some(Fault::NoPidFile) => {}
            Some(Fault::Panic) | None => {
                std::fs::write(&opts.pid_file, self.new_pid().to_string()).unwrap()
            }
        }
        self.set(id, "created");
        Ok(())
    }
    async fn start(&self, id: &str) -> runc_wrapper::Result<()> {
        self.simple("start", id).await?;
        self.set(id, "running");
        Ok(())
    }
    async fn kill(&self, id: &str, _signal: u32, all: bool) -> runc_wrapper::Result<()> {
        self.simple(if all { "kill --all" } else { "kill" }, id)
            .await
    }
    async fn delete(&self, id: &str, force: bool) -> runc_wrapper::Result<()> {
        let sub = if force { "delete --force" } else { "delete" };
        if let Some(Fault::Fail(m)) = self.enter(sub, id).await {
            return Err(failed("delete", m));
        }
        match self.state.lock().unwrap().containers.remove(id) {
            Some(_) => Ok(()),
            None => Err(failed("delete", "container does not exist")),
        }
    }
    async fn update(&self, id: &str, resources_json: &[u8]) -> runc_wrapper::Result<()> {
        let sent = serde_json::from_slice(resources_json).unwrap();
        self.state.lock().unwrap().updates.push(sent);
        self.simple("update", id).await
    }
    async fn exec(
        &self,
        id: &str,
        _exec_id: &str,
        _bundle: &Path,
        _process_json: &[u8],
        opts: ExecOpts,
    ) -> runc_wrapper::Result<()> {
        match self.enter("exec", id).await {
            Some(Fault::Fail(m)) => return Err(failed("exec", m)),
            Some(Fault::NoPidFile) => {}
            _ => std::fs::write(&opts.pid_file, self.new_pid().to_string()).unwrap(),
        }
        self.exists("exec", id)
    }
    async fn ps(&self, id: &str) -> runc_wrapper::Result<Vec<i32>> {
        self.simple("ps", id).await.map(|()| Vec::new())
    }
    async fn pause(&self, id: &str) -> runc_wrapper::Result<()> {
        self.simple("pause", id).await
    }
    async fn resume(&self, id: &str) -> runc_wrapper::Result<()> {
        self.simple("resume", id).await
    }
}

/// Mounts as a set of targets; a volatile overlay mount leaves its marker
/// in the workdir, as the kernel's does.
#[derive(Default)]
pub struct FakePlatform {
    pub runc: Arc<FakeRunc>,
    mounted: Mutex<HashSet<PathBuf>>,
    pub fail_mount: Mutex<Option<&'static str>>,
    /// Whether a teardown without runc succeeds (None: it is never tried
    /// for real; the fake says it stopped short).
    pub teardown_works: Mutex<bool>,
    /// The ids torn down without runc, in order.
    pub torn_down: Mutex<Vec<String>>,
    /// While held, unmounts wait (a loaded disk's sync).
    pub unmount_hold: Hold,
}

impl FakePlatform {
    pub fn mounted(&self) -> HashSet<PathBuf> {
        self.mounted.lock().unwrap().clone()
    }
}

/// A blocking gate for calls the service makes on a blocking thread.
#[derive(Default)]
pub struct Hold {
    held: Mutex<bool>,
    changed: std::sync::Condvar,
}

/// Releases its [`Hold`] when dropped, so a failing test does not leave a
/// blocking thread waiting (the runtime's shutdown would wait for it).
pub struct Held<'a>(&'a Hold);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap() = false;
        self.0.changed.notify_all();
    }
}

impl Hold {
    pub fn hold(&self) -> Held<'_> {
        *self.held.lock().unwrap() = true;
        Held(self)
    }

    fn pass(&self) {
        let held = self.held.lock().unwrap();
        drop(self.changed.wait_while(held, |h| *h).unwrap());
    }
}

impl Platform for FakePlatform {
    fn runc(&self, _cfg: &RuntimeConfig) -> Arc<dyn RuncApi> {
        self.runc.clone()
    }

    fn mount(&self, mounts: &[Mount], target: &Path) -> Result<()> {
        if let Some(reason) = *self.fail_mount.lock().unwrap() {
            return Err(ShimError::Mount {
                target: target.to_path_buf(),
                reason: reason.into(),
            });
        }
        std::fs::create_dir_all(target).unwrap();
        for m in mounts {
            let workdir = m.options.iter().find_map(|o| o.strip_prefix("workdir="));
            if let (Some(w), true) = (workdir, m.options.iter().any(|o| o == "volatile")) {
                std::fs::create_dir_all(volatile::marker(Path::new(w))).unwrap();
            }
        }
        self.mounted.lock().unwrap().insert(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<Duration> {
        self.unmount_hold.pass();
        self.mounted.lock().unwrap().remove(target);
        Ok(Duration::ZERO)
    }

    fn teardown(&self, id: &str, _teardown: &Teardown) -> bool {
        self.torn_down.lock().unwrap().push(id.to_string());
        let works = *self.teardown_works.lock().unwrap();
        if works {
            self.runc.forget(id);
        }
        works
    }
}
