//! The mounts a `runc create` killed midway leaves in its state directory.
//! runc mounts over a file of `<runc root>/<id>/` while it sets the
//! container up (its sealed copy of its own binary, `runc.XXXXXX`), and
//! takes the mount down before it returns; killed in between, the mount
//! stays in the node's mount namespace, and `runc delete --force` then
//! fails to remove the directory (EBUSY) while still answering success.
//! The state directory would stay for as long as the node runs, and a
//! later container of the same id would find it there.

use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use tracing::{info, warn};

/// Detaches every mount below `dir` (deepest first). Returns those done.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for target in mounts_under(&info, dir) {
        match umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {
                info!(target = %target.display(), "mount left by a killed runc removed");
                done.push(target);
            }
            Err(e) => {
                warn!(target = %target.display(), error = %e, "mount left by a killed runc not removed")
            }
        }
    }
    done
}

/// The mount points of `mountinfo` strictly below `dir`, deepest first.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
90 22 0:21 /x /run/containerd/brisk/k8s.io/c1/runc.AbC123 ro shared:5 - tmpfs tmpfs rw
91 90 0:21 /y /run/containerd/brisk/k8s.io/c1/sub/deeper ro shared:5 - tmpfs tmpfs rw
92 22 0:21 /z /run/containerd/brisk/k8s.io/c10/runc.Q ro shared:5 - tmpfs tmpfs rw
93 22 0:21 /w /run/containerd/brisk/k8s.io/c1/with\\040space ro shared:5 - tmpfs tmpfs rw
";

    #[test]
    fn only_mounts_below_the_directory_deepest_first() {
        let got = mounts_under(INFO, Path::new("/run/containerd/brisk/k8s.io/c1"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/containerd/brisk/k8s.io/c1/sub/deeper"),
                PathBuf::from("/run/containerd/brisk/k8s.io/c1/runc.AbC123"),
                PathBuf::from("/run/containerd/brisk/k8s.io/c1/with space"),
            ]
        );
    }
}
