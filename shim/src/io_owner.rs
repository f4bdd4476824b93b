//! `io_uid`/`io_gid` of the runc options. In a user-namespaced pod the
//! container's root is an unprivileged uid on the host, and a process that
//! reopens its own stdio (`/dev/stdout`, i.e. `/proc/self/fd/1`) is checked
//! against the owner of the pipe or FIFO behind it. The stock shim gives
//! those to `io_uid`/`io_gid`; so does brisk, for every FIFO or pipe it
//! hands to the container. Regular files (`file://` logs) keep their owner.

use std::os::fd::{AsFd, BorrowedFd};

use nix::{
    sys::stat::{fstat, SFlag},
    unistd::{fchown, Gid, Uid},
};
use runc_wrapper::ProcessIo;

use crate::error::{Result, ShimError};

/// Gives the FIFOs and pipes of `io` to `uid`:`gid`; nothing to do for 0:0.
pub fn apply(io: &ProcessIo, uid: u32, gid: u32) -> Result<()> {
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    for (name, fd) in [
        ("stdin", &io.stdin),
        ("stdout", &io.stdout),
        ("stderr", &io.stderr),
    ] {
        if let Some(fd) = fd {
            chown_if_pipe(fd.as_fd(), uid, gid).map_err(|e| {
                ShimError::io(
                    format!("give {name} to io_uid {uid} io_gid {gid}"),
                    e.into(),
                )
            })?;
        }
    }
    Ok(())
}

fn chown_if_pipe(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> nix::Result<()> {
    let st = fstat(fd)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return Ok(());
    }
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::{fd::OwnedFd, unix::fs::MetadataExt};

    #[test]
    fn pipes_change_owner_files_do_not() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("needs root to chown: skipping");
            return;
        }
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("log")).unwrap();
        let io = ProcessIo {
            stdin: Some(r),
            stdout: Some(w),
            stderr: Some(OwnedFd::from(file.try_clone().unwrap())),
        };
        apply(&io, 100000, 100001).unwrap();
        for fd in [&io.stdin, &io.stdout] {
            let st = fstat(fd.as_ref().unwrap().as_fd()).unwrap();
            assert_eq!((st.st_uid, st.st_gid), (100000, 100001));
        }
        assert_eq!(file.metadata().unwrap().uid(), 0, "regular file untouched");
    }
}
