//! `binary://` log URIs: the container's output goes to a logging binary the
//! shim starts, with containerd's protocol for it. The binary gets the
//! environment `CONTAINER_ID` and `CONTAINER_NAMESPACE` (nothing else), the
//! read ends of the stdout and stderr pipes as fds 3 and 4, and as fd 5 the
//! write end of a pipe it closes when it is ready (`binary-v2://`: it writes
//! a byte first). The URI's query pairs are its arguments: `?a=b&c` gives
//! `a b c`. The container starts only once the binary is ready.
//!
//! The logger outlives the container's exit (it reads to EOF); when the
//! container is deleted it gets SIGTERM, and SIGKILL if it is still there
//! 12 s later.

use std::{
    ffi::OsString,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{ffi::OsStringExt, process::CommandExt},
    },
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use runc_wrapper::{ExitWatch, ProcessIo};
use tokio::{io::AsyncReadExt, sync::oneshot};
use tracing::{info, warn};

use crate::{
    error::{Result, ShimError},
    process_handle::ProcessHandle,
};

/// How long a logger may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a logger has after SIGTERM, as the stock shim gives it.
const TERM_GRACE: Duration = Duration::from_secs(12);

/// A parsed `binary://` or `binary-v2://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryUri {
    pub path: PathBuf,
    pub args: Vec<OsString>,
    /// `binary-v2`: readiness is a byte written before the close.
    pub v2: bool,
}

/// Parses `uri` if it is a logging-binary URI; None for any other stdio.
pub fn parse(uri: &str) -> Option<Result<BinaryUri>> {
    let (v2, rest) = if let Some(r) = uri.strip_prefix("binary://") {
        (false, r)
    } else if let Some(r) = uri.strip_prefix("binary-v2://") {
        (true, r)
    } else {
        return None;
    };
    Some(parse_rest(uri, v2, rest))
}

fn parse_rest(uri: &str, v2: bool, rest: &str) -> Result<BinaryUri> {
    let bad = |why: &str| ShimError::InvalidArgument(format!("log URI {uri:?}: {why}"));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    if !path.starts_with('/') {
        return Err(bad(
            "the logging binary must be an absolute path (binary:///path)",
        ));
    }
    let path = PathBuf::from(OsString::from_vec(decode(path).map_err(bad)?));
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        for s in [k, v] {
            // As the stock shim: a key's value follows it even when empty,
            // except for a key without any `=`.
            if s.is_empty() && !pair.contains('=') {
                continue;
            }
            let plus = s.replace('+', " ");
            args.push(OsString::from_vec(decode(&plus).map_err(bad)?));
        }
    }
    Ok(BinaryUri { path, args, v2 })
}

/// Percent-decoding of a URI part.
fn decode(s: &str) -> std::result::Result<Vec<u8>, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A running logging binary; dropping it (at the container's delete) ends it.
#[derive(Debug)]
pub struct BinaryLogger {
    pid: i32,
    handle: Option<ProcessHandle>,
    exit: Option<oneshot::Receiver<i32>>,
}

/// A pipe, both ends close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("create logging pipe", e.into()))
}

/// A close-on-exec duplicate of `fd` numbered 10 or more, so that the
/// child's `dup2` onto 3, 4 and 5 never overwrites another source fd.
fn dup_high(fd: &OwnedFd) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(ShimError::io(
            "duplicate logging pipe",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `new` was just returned to us by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Starts the logger of `uri` for container `id` of `namespace` and waits
/// until it is ready. Returns the stdout and stderr to give the container.
pub async fn start(
    uri: &BinaryUri,
    id: &str,
    namespace: &str,
    exits: &dyn ExitWatch,
) -> Result<(ProcessIo, BinaryLogger)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let given = [dup_high(&out_r)?, dup_high(&err_r)?, dup_high(&ready_w)?];
    drop((out_r, err_r, ready_w));
    let raw: [i32; 3] = [0, 1, 2].map(|i| given[i].as_raw_fd());
    let mut cmd = Command::new(&uri.path);
    cmd.args(&uri.args)
        .env_clear()
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the closure only calls dup2, which is
    // async-signal-safe, on fds that stay open in the parent until spawn
    // returns. dup2 onto 3..5 clears close-on-exec on the copies alone.
    unsafe {
        cmd.pre_exec(move || {
            for (target, src) in (3..).zip(raw) {
                if libc::dup2(src, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = exits.spawn(&mut cmd).map_err(|e| {
        ShimError::InvalidArgument(format!("start logging binary {}: {e}", uri.path.display()))
    })?;
    drop(given);
    let pid = spawned.child.id() as i32;
    let mut logger = BinaryLogger {
        pid,
        handle: spawned.pidfd.map(|fd| ProcessHandle::from_fd(pid, fd)),
        exit: Some(spawned.exit),
    };
    drop(spawned.child);
    info!(id, pid, binary = %uri.path.display(), "logging binary started");

    let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)
        .map_err(|e| ShimError::io("logging binary ready pipe", e))?;
    let mut byte = [0u8; 1];
    let got = tokio::time::timeout(READY_TIMEOUT, ready.read(&mut byte)).await;
    let not_ready =
        |why: String| ShimError::Other(format!("logging binary {} {why}", uri.path.display()));
    match got {
        Err(_) => return Err(not_ready(format!("not ready within {READY_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(not_ready(format!("ready pipe: {e}"))),
        Ok(Ok(0)) if uri.v2 => {
            return Err(not_ready(
                "closed its ready pipe without writing (binary-v2): it may have exited".into(),
            ))
        }
        Ok(Ok(_)) => {}
    }
    // The logger exited before it was ready? Then nobody reads the pipes.
    if let Some(exit) = logger.exit.as_mut() {
        if let Ok(status) = exit.try_recv() {
            logger.exit = None;
            return Err(not_ready(format!("exited with status {status} at start")));
        }
    }
    let io = ProcessIo {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    Ok((io, logger))
}

impl Drop for BinaryLogger {
    fn drop(&mut self) {
        let Some(mut exit) = self.exit.take() else {
            return;
        };
        if exit.try_recv().is_ok() {
            return;
        }
        let (pid, handle) = (self.pid, self.handle.take());
        let Some(handle) = handle else {
            warn!(
                pid,
                "no pidfd for the logging binary; leaving it to end on EOF"
            );
            return;
        };
        let _ = handle.signal(libc::SIGTERM);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let _ = handle.signal(libc::SIGKILL);
            return;
        };
        rt.spawn(async move {
            if tokio::time::timeout(TERM_GRACE, &mut exit).await.is_err() {
                warn!(
                    pid,
                    "logging binary still running {TERM_GRACE:?} after SIGTERM, killing it"
                );
                let _ = handle.signal(libc::SIGKILL);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn uri_gives_path_and_arguments() {
        let u = parse("binary:///usr/bin/log%20ger?--level=debug&-x&name=a+b%2Cc")
            .unwrap()
            .unwrap();
        assert_eq!(u.path, PathBuf::from("/usr/bin/log ger"));
        assert_eq!(u.args, args(&["--level", "debug", "-x", "name", "a b,c"]));
        assert!(!u.v2);
        let u = parse("binary-v2:///l?k=").unwrap().unwrap();
        assert_eq!((u.v2, u.args), (true, args(&["k", ""])));
    }

    #[test]
    fn other_stdio_is_not_a_binary_uri() {
        for s in ["/run/fifo/stdout", "file:///var/log/x", ""] {
            assert!(parse(s).is_none(), "{s}");
        }
    }

    #[test]
    fn bad_uris_are_named() {
        for (uri, why) in [
            ("binary://relative/logger", "absolute path"),
            ("binary:///l?x=%zz", "percent escape"),
        ] {
            let e = parse(uri).unwrap().unwrap_err().to_string();
            assert!(e.contains(uri) && e.contains(why), "{e}");
        }
    }
}
