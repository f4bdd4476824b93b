//! Exec: a process added to a running container (`add_exec`), then run by
//! `runc exec --detach` at its Start (`start_exec`).

use std::time::Instant;

use containerd_shim_protos::{
    api,
    events::task::{TaskExecAdded, TaskExecStarted},
    topics,
};
use runc_wrapper::{ExecOpts, ProcessIo};

use super::{
    create::{read_pid, CONSOLE_TIMEOUT},
    runc_call::CallInFlight,
    TaskService,
};
use crate::{
    bundle_spec::ExecProcessSpec,
    container::{self, Process, Shared},
    error::{Result, ShimError},
    process_state::Event,
    stdio::{self, ConsoleSocket, StdioPaths},
};

impl TaskService {
    pub(super) fn add_exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        crate::identifiers::validate("exec id", &req.exec_id)?;
        let spec = ExecProcessSpec::parse(&req.spec.value).map_err(|e| {
            ShimError::InvalidArgument(format!("exec {} process spec: {e}", req.exec_id))
        })?;
        {
            let mut g = container::lock(&c);
            g.ensure_alive()?;
            if g.execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {} in container {}",
                    req.exec_id, req.id
                )));
            }
            let paths = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            g.execs.insert(
                req.exec_id.clone(),
                Process::new(req.exec_id.clone(), paths, Some(spec)),
            );
        }
        self.inner.events.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    pub(super) async fn start_exec(&self, id: &str, exec_id: &str) -> Result<i32> {
        let c = self.container(id)?;
        let pid = self.run_exec(&c, exec_id).await?;
        self.inner.events.send(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    async fn run_exec(&self, c: &Shared, exec_id: &str) -> Result<i32> {
        let (call, runc, id, bundle, spec, paths, (io_uid, io_gid)) = {
            let mut g = container::lock(c);
            let p = g.process(exec_id)?;
            p.state.next(Event::Start, exec_id)?;
            let spec = p
                .spec
                .clone()
                .ok_or_else(|| ShimError::Other("exec has no process spec".into()))?;
            let paths = p.stdio.clone();
            let call = CallInFlight::begin(c, &mut g)?;
            (
                call,
                g.runc.clone(),
                g.id.clone(),
                g.bundle.clone(),
                spec,
                paths,
                g.io_owner,
            )
        };
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let mut opts = ExecOpts {
            pid_file: pid_file.clone(),
            ..Default::default()
        };
        let since = Instant::now();
        let mut console_file = None;
        let mut held = Default::default();
        if paths.terminal {
            let console = ConsoleSocket::new()?;
            opts.console_socket = Some(console.path().to_path_buf());
            let (done, master) =
                tokio::join!(runc.exec(&id, exec_id, &bundle, spec.json(), opts), async {
                    tokio::time::timeout(CONSOLE_TIMEOUT, console.receive_master()).await
                });
            done?;
            let master = master
                .map_err(|_| ShimError::Other("runc sent no pty master within 30s".into()))??;
            console_file = Some(stdio::start_pty_copy(master, &paths)?);
        } else {
            let (io, h): (ProcessIo, _) = stdio::open_direct(&paths)?;
            crate::io_owner::apply(&io, io_uid, io_gid)?;
            opts.io = io;
            runc.exec(&id, exec_id, &bundle, spec.json(), opts).await?;
            held = h;
        }
        let pid = read_pid(&pid_file).await?;
        let _ = std::fs::remove_file(&pid_file);
        let (exit, handle) = self.inner.reaper.watch_with_handle(pid, since);
        {
            let mut g = container::lock(c);
            let p = g.process_mut(exec_id)?;
            p.pid = pid;
            p.held = held;
            p.console = console_file;
            p.handle = handle;
            p.apply(Event::Start)?;
        }
        self.watch_exit(c.clone(), exec_id.to_string(), exit);
        drop(call);
        Ok(pid)
    }
}
