//! `containerd-shim-brisk-v2 start`: containerd runs it once per container
//! and reads the shim's address from its stdout. It finds the pod's shim, or
//! launches it, and exits.
//!
//! The socket is bound here, not by the shim it launches, and handed over as
//! fd 3: when `start` answers, the socket already exists and accepts (the
//! backlog holds containerd's connection until the shim serves it), so
//! nothing has to wait for the new process, and two containers of one pod
//! can never both think they launched its shim.
//!
//! containerd reads stdout and stderr together (2.x) or stdout alone (1.6)
//! and waits for both to close, so neither is passed on to the shim.

use std::{
    io::{Read, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::{net::UnixListener, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use containerd_shim::Flags;
use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, Message},
    shim::oci::Options as RuncOptions,
};

use crate::{
    bundle_spec::BundleSpec,
    protos::bootstrap::BootstrapResult,
    shim_socket::{self, Claim},
    start_input::{Expected, InputError, StartInput, MAX_INPUT},
};

/// Annotations that put a container into an existing shim, most specific first.
const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The fd the serving shim finds its listening socket on.
pub const LISTENER_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("read stdin: {0}")]
    Stdin(std::io::Error),

    #[error(transparent)]
    Input(#[from] InputError),

    #[error("runc options from containerd: {0}")]
    Options(String),

    #[error(transparent)]
    Socket(#[from] shim_socket::SocketError),

    #[error("launch the shim ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("move the shim (pid {pid}) into shim_cgroup {cgroup}: {reason}")]
    ShimCgroup {
        pid: u32,
        cgroup: String,
        reason: String,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The shim that serves `id`: the pod's group annotation, else the id itself.
pub fn grouping(spec: Option<&BundleSpec>, id: &str) -> String {
    spec.and_then(|s| GROUP_ANNOTATIONS.iter().find_map(|k| s.annotation(k)))
        .map_or_else(|| id.to_string(), String::from)
}

/// Runs `start` with containerd's flags; the bundle is the working directory.
pub fn run(flags: &Flags) -> Result<(), StartError> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_end(&mut raw)
        .map_err(StartError::Stdin)?;
    let input = StartInput::decode(
        &raw,
        Expected {
            id: &flags.id,
            namespace: &flags.namespace,
        },
    )?;
    let bundle = std::env::current_dir().map_err(|e| io("working directory", e))?;
    let group = grouping(BundleSpec::load(&bundle).ok().as_ref(), &flags.id);

    let params = input.bootstrap.as_ref();
    let grpc_address = params
        .map(|p| p.containerd_grpc_address.clone())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| flags.address.clone());
    let ttrpc_address = params
        .map(|p| p.containerd_ttrpc_address.clone())
        .filter(|a| !a.is_empty())
        .or_else(|| std::env::var("TTRPC_ADDRESS").ok())
        .unwrap_or_default();
    let dir = Path::new(
        input
            .socket_dir()
            .unwrap_or(shim_socket::DEFAULT_SOCKET_DIR),
    );
    let path = shim_socket::socket_path(dir, &grpc_address, &flags.namespace, &group);
    let address = shim_socket::address_of(&path);

    if let Claim::Bound(listener) = shim_socket::claim(&path)? {
        let launch = Launch {
            flags,
            grpc_address: &grpc_address,
            ttrpc_address: &ttrpc_address,
            address: &address,
            debug: flags.debug || input.debug(),
            shim_cgroup: shim_cgroup(input.options.as_ref())?,
        };
        if let Err(e) = launch.spawn(&listener) {
            drop(listener);
            let _ = shim_socket::remove(&path);
            return Err(e);
        }
    }
    // containerd 1.6 and 1.7 read it back when they reconnect after a restart,
    // and `delete` uses it to find the shim.
    std::fs::write(bundle.join("address"), &address).map_err(|e| io("write address", e))?;
    answer(input.bootstrap.is_some(), &address)
}

/// The `shim_cgroup` of runc options (runc runtime types only).
fn shim_cgroup(options: Option<&Any>) -> Result<Option<String>, StartError> {
    let Some(any) = options.filter(|a| a.type_url.ends_with("containerd.runc.v1.Options")) else {
        return Ok(None);
    };
    let o = RuncOptions::parse_from_bytes(&any.value)
        .map_err(|e| StartError::Options(e.to_string()))?;
    Ok(Some(o.shim_cgroup).filter(|c| !c.is_empty()))
}

/// containerd 2.3 is answered in its own format; older releases read the
/// plain address (which 2.3 also takes).
fn answer(bootstrap: bool, address: &str) -> Result<(), StartError> {
    let bytes = if bootstrap {
        BootstrapResult {
            version: 2,
            address: address.to_string(),
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .map_err(|e| io("encode BootstrapResult", std::io::Error::other(e)))?
    } else {
        address.as_bytes().to_vec()
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|e| io("write stdout", e))
}

struct Launch<'a> {
    flags: &'a Flags,
    grpc_address: &'a str,
    ttrpc_address: &'a str,
    address: &'a str,
    debug: bool,
    shim_cgroup: Option<String>,
}

impl Launch<'_> {
    /// Starts the serving shim with `listener` as its fd 3, in a session of
    /// its own (containerd's signals to `start` are not for it), its stdio
    /// on /dev/null, in the cgroup containerd asked for.
    fn spawn(&self, listener: &UnixListener) -> Result<(), StartError> {
        let exe = std::env::current_exe().map_err(|e| io("find the shim binary", e))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["-namespace", &self.flags.namespace])
            .args(["-id", &self.flags.id])
            .args(["-address", self.grpc_address])
            .args(["-socket", self.address]);
        if self.debug {
            cmd.arg("-debug");
        }
        cmd.env("TTRPC_ADDRESS", self.ttrpc_address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let fd = listener.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (setsid, dup2, fcntl) on
        // fds that exist in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if fd == LISTENER_FD {
                    // dup2 onto itself would keep close-on-exec set.
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, LISTENER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| StartError::Spawn {
            exe: exe.clone(),
            source,
        })?;
        let pid = child.id();
        let placed = self
            .shim_cgroup
            .as_deref()
            .map_or(Ok(()), |cg| join_cgroup(cg, pid))
            .and_then(|()| adjust_oom_score(pid));
        if let Err(e) = placed {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        // The shim outlives `start`; it is not waited for here.
        Ok(())
    }
}

/// Moves `pid` into `cgroup` (a path below the cgroup root): the unified
/// hierarchy on cgroup v2, every mounted hierarchy that has it on v1.
fn join_cgroup(cgroup: &str, pid: u32) -> Result<(), StartError> {
    let fail = |reason: String| StartError::ShimCgroup {
        pid,
        cgroup: cgroup.to_string(),
        reason,
    };
    let rel = cgroup.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let dirs: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.join(rel)]
    } else {
        std::fs::read_dir(root)
            .map_err(|e| fail(format!("read {}: {e}", root.display())))?
            .flatten()
            // `cpu` and `cpuacct` are symlinks to `cpu,cpuacct`: once is enough.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path().join(rel))
            .filter(|d| d.is_dir())
            .collect()
    };
    if dirs.is_empty() {
        return Err(fail("no such cgroup in any hierarchy".into()));
    }
    for d in dirs {
        std::fs::write(d.join("cgroup.procs"), pid.to_string())
            .map_err(|e| fail(format!("{}: {e}", d.display())))?;
    }
    Ok(())
}

/// One above containerd's own `oom_score_adj`, as the stock shim does: under
/// memory pressure the kernel takes a shim before the containerd that
/// manages it.
fn adjust_oom_score(pid: u32) -> Result<(), StartError> {
    let parent = std::os::unix::process::parent_id();
    let read = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj"))
        .map_err(|e| io("read containerd's oom_score_adj", e))?;
    let score: i32 = read.trim().parse().unwrap_or(0);
    if score >= 1000 {
        return Ok(());
    }
    std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        (score + 1).to_string(),
    )
    .map_err(|e| io("write the shim's oom_score_adj", e))
}

fn io(context: &str, source: std::io::Error) -> StartError {
    StartError::Io {
        context: context.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_prefers_the_group_annotation() {
        let spec: BundleSpec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod","io.containerd.runc.v2.group":"grp"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(Some(&spec), "c1"), "grp");
        let spec: BundleSpec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(Some(&spec), "c1"), "pod");
        assert_eq!(grouping(None, "c1"), "c1");
    }

    #[test]
    fn shim_cgroup_comes_from_runc_options_only() {
        let o = RuncOptions {
            shim_cgroup: "/kubepods/shim".into(),
            ..Default::default()
        };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        };
        assert_eq!(
            shim_cgroup(Some(&any)).unwrap().as_deref(),
            Some("/kubepods/shim")
        );
        let ro = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            ..Default::default()
        };
        assert_eq!(shim_cgroup(Some(&ro)).unwrap(), None);
        assert_eq!(shim_cgroup(None).unwrap(), None);
    }
}
