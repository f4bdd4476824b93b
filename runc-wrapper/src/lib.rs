//! A typed async wrapper of the runc command line.
//!
//! Every call runs the runc binary once, with a timeout, and turns a failure
//! into a [`RuncError`] that carries runc's own message. The wrapper does not
//! wait for runc by pid: an [`ExitWatch`] supplied by the caller reports the
//! exit status, so it works inside a subreaper that reaps with `waitpid(-1)`.
//!
//! crun takes the same command line for every call the shim makes (global
//! `--root`, `--systemd-cgroup`, `--log --log-format json`; `create`,
//! `start`, `kill --all`, `delete --force`, `exec --process --detach`,
//! `update --resources -`, `ps --format json`, `pause`, `resume`), and
//! its JSON log has runc's `msg` and `level`. It differs in what it says
//! when it fails, which [`Failure::of`] reads for both, and it lacks
//! `events` ([`Runc::stats`]) and, in 1.8, `features`.

mod api;
mod error;
mod spawn;
mod types;

use std::{
    ffi::OsString,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

pub use api::RuncApi;
pub use error::{Failure, Result, RuncError};
pub use spawn::{pidfd_of, DirectWait, ExitWatch, Spawned};
pub use types::{
    ContainerState, CpuStats, CpuUsage, CreateOpts, ExecOpts, MemoryEntry, MemoryStats, PidsStats,
    ProcessIo, Stats,
};

/// Calls slower than this are logged at warning level with their duration.
const SLOW_CALL: Duration = Duration::from_secs(1);

/// How long a runc killed at its timeout is waited for. SIGKILL ends it at
/// once unless it is stuck in the kernel (a D state on a hung filesystem),
/// and then no wait would do.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Told of every runc call that ran: its command, how long it took, and
/// whether it timed out (and was killed).
pub type Observer = fn(command: &str, took: Duration, timed_out: bool);

static OBSERVER: OnceLock<Observer> = OnceLock::new();

/// Installs the process's observer of runc calls (the shim's figures).
/// Only the first call installs one; it returns false for later calls.
pub fn set_observer(observer: Observer) -> bool {
    OBSERVER.set(observer).is_ok()
}

fn observe(command: &str, took: Duration, timed_out: bool) {
    if let Some(o) = OBSERVER.get() {
        o(command, took, timed_out);
    }
}

/// A runc binary together with the global options every call passes.
#[derive(Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    systemd_cgroup: bool,
    timeout: Duration,
    watch: Arc<dyn ExitWatch>,
}

impl std::fmt::Debug for Runc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runc")
            .field("binary", &self.binary)
            .field("root", &self.root)
            .field("systemd_cgroup", &self.systemd_cgroup)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What one invocation needs besides its arguments.
#[derive(Default)]
struct Invocation<'a> {
    /// Bytes written to runc's stdin (for `update --resources -`).
    stdin: Option<Vec<u8>>,
    /// The container's standard streams, handed to runc to pass on.
    io: Option<ProcessIo>,
    /// runc's JSON log, read for the error message when stderr is not ours.
    log_file: Option<&'a Path>,
}

impl Runc {
    pub fn new(
        binary: impl Into<PathBuf>,
        root: impl Into<PathBuf>,
        watch: Arc<dyn ExitWatch>,
    ) -> Self {
        Runc {
            binary: binary.into(),
            root: root.into(),
            systemd_cgroup: false,
            timeout: Duration::from_secs(60),
            watch,
        }
    }

    pub fn with_systemd_cgroup(mut self, on: bool) -> Self {
        self.systemd_cgroup = on;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `runc create`: sets up the container and leaves its init process
    /// blocked until [`Runc::start`].
    pub async fn create(&self, id: &str, bundle: &Path, opts: CreateOpts) -> Result<()> {
        let log = bundle.join("log.json");
        let mut args: Vec<OsString> = vec!["create".into(), "--bundle".into(), bundle.into()];
        args.push("--pid-file".into());
        args.push(opts.pid_file.into());
        if let Some(sock) = opts.console_socket {
            args.push("--console-socket".into());
            args.push(sock.into());
        }
        if opts.no_pivot {
            args.push("--no-pivot".into());
        }
        if opts.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        args.push(id.into());
        let inv = Invocation {
            io: Some(opts.io),
            log_file: Some(&log),
            ..Default::default()
        };
        self.run("create", args, inv).await.map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.simple("start", &[id]).await
    }

    pub async fn state(&self, id: &str) -> Result<ContainerState> {
        let out = self
            .run(
                "state",
                vec!["state".into(), id.into()],
                Invocation::default(),
            )
            .await?;
        parse_state(&out)
    }

    /// `runc kill`; `all` signals every process of the container.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        if all {
            self.simple("kill", &["--all", id, &sig]).await
        } else {
            self.simple("kill", &[id, &sig]).await
        }
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        if force {
            self.simple("delete", &["--force", id]).await
        } else {
            self.simple("delete", &[id]).await
        }
    }

    /// `runc update --resources -`, with the resources (OCI
    /// `LinuxResources`, JSON) on stdin. The bytes go to runc as given, never
    /// through this crate's types, so fields they do not model (newer
    /// runtime-spec or runc keys) reach runc instead of being dropped.
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let inv = Invocation {
            stdin: Some(resources_json.to_vec()),
            ..Default::default()
        };
        let args = vec!["update".into(), "--resources".into(), "-".into(), id.into()];
        self.run("update", args, inv).await.map(drop)
    }

    /// `runc exec --detach` of a process spec (OCI `Process`, JSON), written
    /// to a file in `bundle`. The bytes go to runc as given, so fields this
    /// crate does not model survive.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        process_json: &[u8],
        opts: ExecOpts,
    ) -> Result<()> {
        let spec_path = bundle.join(format!(".exec-{exec_id}.json"));
        tokio::fs::write(&spec_path, process_json)
            .await
            .map_err(|source| RuncError::Io {
                command: "exec".into(),
                context: format!("write {}", spec_path.display()),
                source,
            })?;
        let log = bundle.join("log.json");
        let mut args: Vec<OsString> = vec![
            "exec".into(),
            "--detach".into(),
            "--process".into(),
            spec_path.clone().into(),
            "--pid-file".into(),
            opts.pid_file.into(),
        ];
        if let Some(sock) = opts.console_socket {
            args.push("--console-socket".into());
            args.push(sock.into());
        }
        args.push(id.into());
        let inv = Invocation {
            io: Some(opts.io),
            log_file: Some(&log),
            ..Default::default()
        };
        let res = self.run("exec", args, inv).await;
        let _ = tokio::fs::remove_file(&spec_path).await;
        res.map(drop)
    }

    /// `runc ps --format json`: the pids of the container's processes.
    pub async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let args = vec!["ps".into(), "--format".into(), "json".into(), id.into()];
        let out = self.run("ps", args, Invocation::default()).await?;
        parse_ps(&out)
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.simple("pause", &[id]).await
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.simple("resume", &[id]).await
    }

    /// One sample of `runc events --stats`.
    pub async fn stats(&self, id: &str) -> Result<Stats> {
        let args = vec!["events".into(), "--stats".into(), id.into()];
        let out = self.run("events", args, Invocation::default()).await?;
        parse_stats_event(&out)
    }

    async fn simple(&self, command: &'static str, rest: &[&str]) -> Result<()> {
        let mut args: Vec<OsString> = vec![command.into()];
        args.extend(rest.iter().map(OsString::from));
        self.run(command, args, Invocation::default())
            .await
            .map(drop)
    }

    fn command(&self, args: Vec<OsString>, log_file: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.binary);
        // containerd under systemd passes its NOTIFY_SOCKET down to the shim.
        // Given it, runc binds a notify socket of its own below its root,
        // whose path is over the 108-byte limit for a 64-character id, and
        // `runc start` fails. Containers get their environment from the spec,
        // so nothing that should see the variable loses it.
        cmd.env_remove("NOTIFY_SOCKET");
        cmd.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        if let Some(log) = log_file {
            cmd.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        cmd.args(args);
        cmd
    }

    /// Runs one runc command to completion and returns its stdout.
    async fn run(
        &self,
        command: &'static str,
        args: Vec<OsString>,
        inv: Invocation<'_>,
    ) -> Result<Vec<u8>> {
        let started = Instant::now();
        let mut cmd = self.command(args, inv.log_file);
        let capture = inv.io.is_none();
        match inv.io {
            Some(io) => {
                cmd.stdin(stdio(io.stdin))
                    .stdout(stdio(io.stdout))
                    .stderr(stdio(io.stderr));
            }
            None => {
                cmd.stdin(if inv.stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            }
        }
        let Spawned {
            mut child,
            exit: exited,
            pidfd,
        } = self
            .watch
            .spawn(&mut cmd)
            .map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        // The Command still holds the container's stdio; let it go now.
        drop(cmd);
        let pid = child.id() as i32;

        let io_err = |context: &str, source| RuncError::Io {
            command: command.into(),
            context: context.into(),
            source,
        };
        let stdin = match (child.stdin.take(), inv.stdin) {
            (Some(pipe), Some(data)) => Some((pipe, data)),
            _ => None,
        };
        let stdout = child
            .stdout
            .take()
            .map(|p| pipe_reader(p.into()))
            .transpose()
            .map_err(|e| io_err("stdout pipe", e))?;
        let stderr = child
            .stderr
            .take()
            .map(|p| pipe_reader(p.into()))
            .transpose()
            .map_err(|e| io_err("stderr pipe", e))?;

        // Kept beside the work: a runc killed at its timeout is waited for.
        let mut exited = std::pin::pin!(exited);
        let exit_of_work = exited.as_mut();
        let work = async move {
            let feed = async {
                if let Some((pipe, data)) = stdin {
                    let mut w = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(pipe))?;
                    w.write_all(&data).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let (fed, out, err, status) =
                tokio::join!(feed, read_all(stdout), read_all(stderr), exit_of_work);
            (fed, out, err, status)
        };
        let outcome = tokio::time::timeout(self.timeout, work).await;
        let (fed, out, err, status) = match outcome {
            Ok(done) => done,
            Err(_) => {
                // Through the pidfd: runc may have exited and been reaped
                // just now, and its pid may belong to another process.
                match &pidfd {
                    Some(fd) => {
                        let _ =
                            rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
                        // Until it is gone, a killed `runc create` may still
                        // be making the container's state and cgroups, and
                        // the caller's cleanup (`runc delete --force`) would
                        // run beside it and miss them.
                        let gone = tokio::time::timeout(KILL_WAIT, exited.as_mut())
                            .await
                            .is_ok();
                        warn!(command, pid, after = ?self.timeout, gone, "runc call timed out, killed it");
                    }
                    None => {
                        warn!(command, pid, after = ?self.timeout, "runc call timed out; no pidfd to kill it by, left running")
                    }
                }
                observe(command, started.elapsed(), true);
                return Err(RuncError::Timeout {
                    command: command.into(),
                    after: self.timeout,
                });
            }
        };
        let elapsed = started.elapsed();
        observe(command, elapsed, false);
        if elapsed > SLOW_CALL {
            warn!(command, ?elapsed, "slow runc call");
        } else {
            debug!(command, ?elapsed, "runc call");
        }
        let status = status.map_err(|_| RuncError::ExitLost {
            command: command.into(),
        })?;
        if status != 0 {
            let stderr_text = String::from_utf8_lossy(&err.unwrap_or_default())
                .trim()
                .to_string();
            let message = match inv.log_file {
                Some(log) if !capture || stderr_text.is_empty() => {
                    last_log_error(log).await.unwrap_or(stderr_text)
                }
                _ => stderr_text,
            };
            info!(command, status, %message, "runc call failed");
            let message = if message.is_empty() {
                "no error message".into()
            } else {
                message
            };
            return Err(RuncError::failed(command, status, message));
        }
        fed.map_err(|e| io_err("write stdin", e))?;
        out.map_err(|e| io_err("read stdout", e))
    }
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

fn pipe_reader(fd: OwnedFd) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

async fn read_all(pipe: Option<tokio::net::unix::pipe::Receiver>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        p.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Decodes the output of `runc state`.
pub fn parse_state(out: &[u8]) -> Result<ContainerState> {
    decode("state", out)
}

/// Decodes the output of `runc ps --format json` (`null` means no process).
pub fn parse_ps(out: &[u8]) -> Result<Vec<i32>> {
    decode::<Option<Vec<i32>>>("ps", out).map(Option::unwrap_or_default)
}

/// Decodes one record of `runc events --stats`.
pub fn parse_stats_event(out: &[u8]) -> Result<Stats> {
    let event: types::Event = decode("events", out)?;
    match event.data {
        Some(stats) if event.kind == "stats" => Ok(stats),
        _ => Err(RuncError::failed(
            "events",
            0,
            format!("expected a stats event, got {:?}", event.kind),
        )),
    }
}

fn decode<T: serde::de::DeserializeOwned>(command: &str, out: &[u8]) -> Result<T> {
    serde_json::from_slice(out).map_err(|source| RuncError::Decode {
        command: command.into(),
        source,
    })
}

/// The error messages runc wrote to its JSON log, most recent last.
async fn last_log_error(log: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(log).await.ok()?;
    parse_log_errors(&text)
}

/// Extracts the `msg` of the last error-level record of runc's JSON log.
pub fn parse_log_errors(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Record {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .find(|r| r.level == "error" || r.level == "fatal")
        .map(|r| r.msg)
}

#[cfg(test)]
mod tests;
