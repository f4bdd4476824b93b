//! Standard streams of container and exec processes.
//!
//! Without a terminal the process gets the FIFOs themselves, opened by the
//! shim: no copy loop runs in the shim, so output costs it no memory or CPU.
//! The shim holds one extra end of each FIFO while the process lives, so
//! neither side sees EOF or EPIPE early (a client that reconnects, a
//! containerd that restarts); it lets go at exit so readers see EOF.
//!
//! With a terminal runc hands back the pty master over a console socket, and
//! two threads copy between the master and the FIFOs.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
};

use nix::{
    cmsg_space,
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
};
use runc_wrapper::ProcessIo;
use tokio::net::UnixListener;
use tracing::debug;

use crate::error::{Result, ShimError};

/// The FIFO paths of a Create or Exec request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's own ends of a process's streams, kept while it runs.
#[derive(Debug, Default)]
pub struct HeldIo {
    stdin: Option<File>,
    outputs: Vec<File>,
}

impl HeldIo {
    /// CloseIO: the process sees EOF on stdin once the client's end is closed too.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// At exit: let readers of the FIFOs see EOF.
    pub fn release(&mut self) {
        self.stdin = None;
        self.outputs.clear();
    }
}

fn open_err(path: &str) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |source| ShimError::Stdio {
        path: path.to_string(),
        source,
    }
}

/// Opens an output: a FIFO (read-write, so the open never blocks), or the
/// file of a `file://` URI.
fn open_output(path: &str) -> Result<File> {
    if let Some(file) = path.strip_prefix("file://") {
        return OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map_err(open_err(path));
    }
    if path.contains("://") {
        return Err(ShimError::InvalidArgument(format!(
            "unsupported stdio URI {path}"
        )));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(open_err(path))
}

/// Opens the read end of a stdin FIFO without waiting for a writer.
fn open_stdin_reader(path: &str) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(open_err(path))?;
    let flags = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| open_err(path)(e.into()))?;
    let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(|e| open_err(path)(e.into()))?;
    Ok(f)
}

/// Opens the FIFOs of a process without a terminal. Returns what runc hands
/// to the process and what the shim keeps.
pub fn open_direct(paths: &StdioPaths) -> Result<(ProcessIo, HeldIo)> {
    let mut io = ProcessIo::default();
    let mut held = HeldIo::default();
    if !paths.stdin.is_empty() {
        // Our writer first, so the reader below opens without blocking and
        // the process does not read EOF before the client connects.
        let keeper = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.stdin)
            .map_err(open_err(&paths.stdin))?;
        io.stdin = Some(open_stdin_reader(&paths.stdin)?.into());
        held.stdin = Some(keeper);
    }
    for (path, slot) in [
        (&paths.stdout, &mut io.stdout),
        (&paths.stderr, &mut io.stderr),
    ] {
        if path.is_empty() {
            continue;
        }
        let f = open_output(path)?;
        *slot = Some(OwnedFd::from(f.try_clone().map_err(open_err(path))?));
        held.outputs.push(f);
    }
    Ok((io, held))
}

/// A unix socket on which runc sends the pty master of a terminal process.
/// Whoever connects first gets the container's terminal, so it lives in a
/// fresh private directory of root's (see [`crate::private_dir`]), never at
/// a name in `/tmp` that a local user could create first. Bundle paths are
/// too long for a socket address; the private root is short.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
    /// Removed at drop, after the listener is closed.
    _dir: tempfile::TempDir,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        let dir = crate::private_dir::scratch("pty-")?;
        let path = dir.path().join("pty.sock");
        let listener = UnixListener::bind(&path)
            .map_err(|e| ShimError::io(format!("bind {}", path.display()), e))?;
        Ok(ConsoleSocket {
            path,
            listener,
            _dir: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for runc to connect and send the pty master.
    pub async fn receive_master(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|e| ShimError::io("accept on console socket", e))?;
        loop {
            stream
                .readable()
                .await
                .map_err(|e| ShimError::io("console socket", e))?;
            let got = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut buf = [0u8; 4096];
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut cmsg = cmsg_space!([std::os::fd::RawFd; 1]);
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        if let Some(&fd) = fds.first() {
                            // SAFETY: the kernel just installed this fd in our
                            // table for us (SCM_RIGHTS); nothing else owns it.
                            return Ok(Some(unsafe {
                                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                            }));
                        }
                    }
                }
                Ok(None)
            });
            match got {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => {
                    return Err(ShimError::Other(
                        "runc sent no pty master on the console socket".into(),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ShimError::io("receive pty master", e)),
            }
        }
    }
}

/// Starts the copy threads between a pty master and the FIFOs. Returns a
/// duplicate of the master kept for resizing.
pub fn start_pty_copy(master: OwnedFd, paths: &StdioPaths) -> Result<File> {
    let master = File::from(master);
    let for_resize = master
        .try_clone()
        .map_err(|e| ShimError::io("dup pty master", e))?;
    if !paths.stdin.is_empty() {
        let mut input = open_stdin_reader(&paths.stdin)?;
        let mut to_master = master
            .try_clone()
            .map_err(|e| ShimError::io("dup pty master", e))?;
        std::thread::Builder::new()
            .name("pty-stdin".into())
            .spawn(move || {
                let _ = std::io::copy(&mut input, &mut to_master);
            })
            .map_err(|e| ShimError::io("spawn pty stdin thread", e))?;
    }
    if !paths.stdout.is_empty() {
        let mut out = open_output(&paths.stdout)?;
        let mut from_master = master;
        std::thread::Builder::new()
            .name("pty-stdout".into())
            .spawn(move || {
                // Ends with EIO once every slave fd is closed, i.e. at exit.
                let mut buf = [0u8; 8192];
                loop {
                    match from_master.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                debug!("pty output copy finished");
            })
            .map_err(|e| ShimError::io("spawn pty stdout thread", e))?;
    }
    Ok(for_resize)
}

/// ResizePty.
pub fn resize(master: &File, width: u32, height: u32) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives on our stack for
    // the whole call; the fd is a pty master we own.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(ShimError::io("resize pty", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::private_dir::RemoveOnDrop;

    /// A local user (uid 65534) plants the old console socket directories
    /// in /tmp, open directories and symlinks to a directory of theirs: the
    /// console socket must be in none of them, but in a fresh 0700
    /// directory of root's, and must leave what they planted alone.
    #[tokio::test]
    async fn console_socket_ignores_what_others_plant_in_tmp() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the shim's private directory is root's");
            return;
        }
        let created_root = !Path::new(crate::private_dir::ROOT).exists();
        let theirs = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let pid = std::process::id();
        let planted: Vec<PathBuf> = (0..8)
            .map(|n| std::env::temp_dir().join(format!("brisk-pty-{pid}-{n}")))
            .collect();
        let _cleanup = RemoveOnDrop(planted.clone());
        for (n, p) in planted.iter().enumerate() {
            if n % 2 == 0 {
                std::fs::create_dir(p).unwrap();
                std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
            } else {
                std::os::unix::fs::symlink(theirs.path(), p).unwrap();
            }
        }

        let sock = ConsoleSocket::new().unwrap();

        let dir = sock.path().parent().unwrap();
        assert_eq!(dir.parent(), Some(Path::new(crate::private_dir::ROOT)));
        let meta = std::fs::symlink_metadata(dir).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o7777), (0, 0o700));
        for (n, p) in planted.iter().enumerate() {
            let m = std::fs::symlink_metadata(p).unwrap();
            if n % 2 == 0 {
                assert!(m.is_dir() && m.uid() == 65534, "{}", p.display());
                assert_eq!(
                    std::fs::read_dir(p).unwrap().count(),
                    0,
                    "{} was used",
                    p.display()
                );
            } else {
                assert!(m.file_type().is_symlink(), "{}", p.display());
            }
        }
        assert_eq!(std::fs::read_dir(theirs.path()).unwrap().count(), 0);
        drop(sock);
        if created_root {
            let _ = std::fs::remove_dir(crate::private_dir::ROOT);
        }
    }
}
