//! Create: reserve the id, read the bundle and settings, mount the rootfs,
//! `runc create`, register. What each step set up is recorded in a
//! [`Rollback`], which undoes it (runc's state, the mounts, the volatile
//! markers) when a later step fails, or when the Create goes away before it
//! registered the container: a failed Create leaves nothing behind.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use containerd_shim_protos::{
    api,
    events::task::{TaskCreate, TaskIO},
    protobuf::MessageField,
    topics,
};
use runc_wrapper::{CreateOpts, RuncApi};
use tracing::{debug, info, warn};

use super::TaskService;
use crate::{
    bundle_spec::BundleSpec,
    cgroup,
    config::RuntimeConfig,
    container::{Container, Process},
    detached::{Detached, Job, WorkKey},
    error::{Result, ShimError},
    exited_teardown::Teardown,
    io_owner, log_binary,
    platform::Platform,
    rootfs::{self, MountedRootfs},
    runc_leftovers,
    stdio::{self, ConsoleSocket, StdioPaths},
    volatile,
};

/// How long Create waits for runc to send a terminal's pty master.
pub(super) const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a Create has set up so far, undone unless the Create succeeds.
struct Rollback {
    platform: Arc<dyn Platform>,
    /// For the retries of a state directory that outlives the first try.
    detached: Detached,
    id: String,
    /// runc was asked to create the container (it may have left state
    /// behind even when it failed).
    runc: Option<Arc<dyn RuncApi>>,
    /// The spec's cgroups path, for runc's cgroupfs driver: a `runc create`
    /// killed midway leaves its cgroups, which `runc delete` cannot find.
    cgroups_path: Option<String>,
    /// runc's state directory of the container: mounts a killed `runc
    /// create` left there keep `runc delete` from removing it.
    state_dir: Option<PathBuf>,
    rootfs: Option<MountedRootfs>,
    /// Keeps the id and the rootfs paths busy until the undo is done.
    job: Option<Job>,
}

impl Rollback {
    /// Everything is in place: nothing is to be undone.
    fn commit(&mut self) -> Option<MountedRootfs> {
        self.runc = None;
        self.cgroups_path = None;
        self.state_dir = None;
        self.job = None;
        self.rootfs.take()
    }

    /// Undoes what was set up, in reverse order; returns once runc's state
    /// is gone (or its removal is retried detached), with the rootfs
    /// unmount handed to the detached worker.
    async fn undo(mut self) {
        let parts = self.take();
        undo(parts).await;
    }

    fn take(&mut self) -> Undo {
        Undo {
            platform: self.platform.clone(),
            detached: self.detached.clone(),
            id: self.id.clone(),
            runc: self.runc.take(),
            cgroups_path: self.cgroups_path.take(),
            state_dir: self.state_dir.take(),
            rootfs: self.rootfs.take(),
            job: self.job.take(),
        }
    }
}

impl Drop for Rollback {
    /// A Create dropped midway (its caller went away) still leaves nothing
    /// behind: the undo runs on its own.
    fn drop(&mut self) {
        if self.runc.is_some() || self.rootfs.is_some() {
            tokio::spawn(undo(self.take()));
        }
    }
}

/// What a [`Rollback`] undoes, taken out of it.
struct Undo {
    platform: Arc<dyn Platform>,
    detached: Detached,
    id: String,
    runc: Option<Arc<dyn RuncApi>>,
    cgroups_path: Option<String>,
    state_dir: Option<PathBuf>,
    rootfs: Option<MountedRootfs>,
    job: Option<Job>,
}

async fn undo(u: Undo) {
    let Undo {
        platform,
        detached,
        id,
        runc,
        cgroups_path,
        state_dir,
        rootfs,
        job,
    } = u;
    let _job = job;
    if let Some(runc) = runc {
        match runc.delete(&id, true).await {
            Ok(()) => debug!(id, "runc state of the failed create removed"),
            Err(e) if e.is_not_found() => {}
            Err(e) => warn!(id, error = %e, "runc delete --force after a failed create"),
        }
        if let Some(path) = cgroups_path {
            let _ =
                tokio::task::spawn_blocking(move || cgroup::remove_leftover(&path, false)).await;
        }
        if let Some(dir) = state_dir.filter(|d| is_dir(d)) {
            if !remove_state(&*runc, &id, &dir).await {
                // A runc delete that timed out or failed (a loaded node, a
                // hung runc): tried again, detached, so the Create's error
                // is not held back; a new Create of the id waits for it.
                let job = detached.begin(vec![WorkKey::Container(id.clone())]);
                tokio::spawn(retry_state_removal(runc, id.clone(), dir, job));
            }
        }
    }
    // Detached, as after an exit: a loaded disk's sync would hold back the
    // Create's answer for minutes. A new Create of the paths waits for it.
    if let Some(r) = rootfs {
        rootfs::unmount_detached(&detached, platform, id, r);
    }
}

impl TaskService {
    pub(super) async fn create(&self, req: &api::CreateTaskRequest) -> Result<i32> {
        let id = req.id.clone();
        crate::identifiers::validate("container id", &id)?;
        let reservation = self.inner.registry.reserve(&id)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restoring from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = BundleSpec::load(&bundle)?;
        let cfg = RuntimeConfig::from_create_options(&self.inner.namespace, req.options.as_ref())?;
        cfg.save(&bundle)?;
        let runc = self.inner.platform.runc(&cfg);

        // A previous container of this id may still be leaving runc.
        let runc_keys = [
            WorkKey::Container(id.clone()),
            WorkKey::RuncCall(id.clone()),
        ];
        self.wait_work_free(&id, &runc_keys).await;
        let mut rollback = Rollback {
            platform: self.inner.platform.clone(),
            detached: self.inner.detached.clone(),
            id: id.clone(),
            runc: None,
            cgroups_path: None,
            state_dir: Some(cfg.runc_root.join(&id)),
            rootfs: None,
            job: None,
        };
        if !req.rootfs.is_empty() {
            let mounted = self.mount_rootfs(&id, &bundle, &spec, &cfg, req).await?;
            let keys = rootfs::work_keys(&mounted.target, &mounted.volatile_workdirs);
            rollback.job = Some(self.inner.detached.begin(keys));
            rollback.rootfs = Some(mounted);
        }

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut init = Process::new(id.clone(), paths.clone(), None);
        let since = Instant::now();
        rollback.runc = Some(runc.clone());
        if !cfg.systemd_cgroup {
            rollback.cgroups_path = spec.cgroups_path().map(str::to_string);
        }
        let who = Who {
            id: &id,
            namespace: &self.inner.namespace,
            exits: &self.inner.reaper,
        };
        let created = run_create(&*runc, &who, &bundle, &cfg, &paths, &mut init).await;
        if let Err(e) = created {
            warn!(id, error = %e, "create failed, cleaning up");
            rollback.undo().await;
            return Err(e);
        }
        let pid = init.pid;
        let made = self.inner.registry.insert(reservation, || {
            let mut container = Container::new(id.clone(), bundle, runc, init, rollback.commit());
            container.shares_pid_ns = !spec.own_pid_namespace();
            container.teardown = Teardown::plan(&id, &spec, &cfg);
            container.io_owner = (cfg.io_uid, cfg.io_gid);
            Arc::new(Mutex::new(container))
        });
        let container = match made {
            Ok(c) => c,
            Err(reservation) => {
                info!(id, "deleted while it was being created; undoing the create");
                rollback.undo().await;
                drop(reservation);
                return Err(ShimError::DeletedWhileCreating(id));
            }
        };
        // Before the container runs: no kill can come before the watch.
        let cgroup = cgroup::locate(spec.cgroups_path(), cfg.systemd_cgroup, pid as u32);
        let oom = cgroup
            .as_ref()
            .and_then(|cg| self.watch_oom(id.clone(), cg));
        // The handle lets Kill signal the init without a runc process.
        let (exit, handle) = self.inner.reaper.watch_with_handle(pid, since);
        {
            let mut g = crate::container::lock(&container);
            g.oom = oom;
            g.cgroup = cgroup;
            g.init.handle = handle;
        }
        self.watch_exit(container, String::new(), exit);
        self.inner.events.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            },
        );
        info!(id, pid, "container created");
        Ok(pid)
    }

    /// Mounts the request's rootfs on `bundle/rootfs`, volatile where
    /// wanted and supported. On failure nothing of it stays mounted.
    async fn mount_rootfs(
        &self,
        id: &str,
        bundle: &Path,
        spec: &BundleSpec,
        cfg: &RuntimeConfig,
        req: &api::CreateTaskRequest,
    ) -> Result<MountedRootfs> {
        let target = rootfs::rootfs_of(bundle);
        let mut mounts = req.rootfs.clone();
        // The previous container of this bundle or snapshot may still be
        // unmounting; its worker must be done before we mount there.
        let workdirs: Vec<PathBuf> = mounts
            .iter()
            .flat_map(|m| &m.options)
            .filter_map(|o| o.strip_prefix("workdir="))
            .map(PathBuf::from)
            .collect();
        self.wait_work_free(id, &rootfs::work_keys(&target, &workdirs))
            .await;
        let enable = cfg.volatile && volatile_wanted(spec);
        let discard = cfg.discard_dirty_volatile_workdir;
        let (platform, t) = (self.inner.platform.clone(), target.clone());
        let started = Instant::now();
        let volatile_workdirs = tokio::task::spawn_blocking(move || {
            let workdirs = volatile::prepare(&mut mounts, enable, discard)?;
            match platform.mount(&mounts, &t) {
                Ok(()) => Ok(workdirs),
                Err(e) => {
                    // The mount unmounted what it had mounted: clean.
                    volatile::clear_markers(&workdirs);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| ShimError::Other(format!("mount task: {e}")))??;
        info!(id, took = ?started.elapsed(), volatile = !volatile_workdirs.is_empty(), "rootfs mounted");
        let figures = &crate::metrics::FIGURES;
        crate::metrics::inc(if volatile_workdirs.is_empty() {
            &figures.mounts_plain
        } else {
            &figures.mounts_volatile
        });
        Ok(MountedRootfs {
            target,
            volatile_workdirs,
        })
    }
}

/// Whose container a Create makes, for a logging binary's environment.
struct Who<'a> {
    id: &'a str,
    namespace: &'a str,
    exits: &'a dyn runc_wrapper::ExitWatch,
}

/// How often, and how far apart at first, the removal of a failed
/// create's runc state is tried again (the wait doubles each time).
const STATE_RETRIES: u32 = 5;
const STATE_RETRY_FIRST: Duration = Duration::from_secs(1);

fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Takes down the mounts a killed `runc create` left in its state
/// directory and has runc remove the directory. True when it is gone.
async fn remove_state(runc: &dyn RuncApi, id: &str, dir: &Path) -> bool {
    let d = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || runc_leftovers::unmount_under(&d)).await;
    if let Err(e) = runc.delete(id, true).await {
        warn!(id, error = %e, "runc delete --force of a failed create's state");
    }
    !is_dir(dir)
}

async fn retry_state_removal(runc: Arc<dyn RuncApi>, id: String, dir: PathBuf, _job: Job) {
    let started = Instant::now();
    let mut wait = STATE_RETRY_FIRST;
    for attempt in 1..=STATE_RETRIES {
        tokio::time::sleep(wait).await;
        if remove_state(&*runc, &id, &dir).await {
            info!(id, attempt, took = ?started.elapsed(), "runc state of a failed create removed");
            return;
        }
        wait *= 2;
    }
    tracing::error!(id, state = %dir.display(), "runc state of a failed create not removed; runc delete --force {id} removes it");
}

/// `runc create` with the process's stdio, filling in `init.pid`.
async fn run_create(
    runc: &dyn RuncApi,
    who: &Who<'_>,
    bundle: &Path,
    cfg: &RuntimeConfig,
    paths: &StdioPaths,
    init: &mut Process,
) -> Result<()> {
    let id = who.id;
    let pid_file = bundle.join("init.pid");
    let mut opts = CreateOpts {
        pid_file: pid_file.clone(),
        no_pivot: cfg.no_pivot_root,
        no_new_keyring: cfg.no_new_keyring,
        ..Default::default()
    };
    if paths.terminal {
        let console = ConsoleSocket::new()?;
        opts.console_socket = Some(console.path().to_path_buf());
        let (created, master) = tokio::join!(runc.create(id, bundle, opts), async {
            tokio::time::timeout(CONSOLE_TIMEOUT, console.receive_master()).await
        });
        created?;
        let master =
            master.map_err(|_| ShimError::Other("runc sent no pty master within 30s".into()))??;
        init.console = Some(stdio::start_pty_copy(master, paths)?);
    } else if let Some(uri) = log_binary::parse(&paths.stdout) {
        // As the stock shim: the logger takes stdout and stderr, and the
        // container's stdin is not connected.
        let (io, logger) = log_binary::start(&uri?, id, who.namespace, who.exits).await?;
        io_owner::apply(&io, cfg.io_uid, cfg.io_gid)?;
        opts.io = io;
        init.logger = Some(logger);
        runc.create(id, bundle, opts).await?;
    } else {
        let (io, held) = stdio::open_direct(paths)?;
        io_owner::apply(&io, cfg.io_uid, cfg.io_gid)?;
        opts.io = io;
        runc.create(id, bundle, opts).await?;
        init.held = held;
    }
    init.pid = read_pid(&pid_file).await?;
    Ok(())
}

/// False when the pod asked for no volatile rootfs through the annotation.
fn volatile_wanted(spec: &BundleSpec) -> bool {
    let off = spec
        .annotation(volatile::ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    !off
}

pub(super) async fn read_pid(path: &Path) -> Result<i32> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ShimError::io(format!("read pid file {}", path.display()), e))?;
    text.trim()
        .parse()
        .map_err(|_| ShimError::Other(format!("pid file {} holds {:?}", path.display(), text)))
}
