//! Where a container's cgroup is, from its spec, as runc places it.
//!
//! Reading it from `/proc/PID/cgroup` right after `runc create` is not
//! enough: with the systemd driver on cgroup v2, runc asks systemd for the
//! container's scope, waits a second at most for the job, and goes on;
//! under load systemd moves the process later, and the shim would watch the
//! cgroup the process was still in (the shim's own), missing its OOM kills.
//! The spec's `linux.cgroupsPath` says where it will be, whatever the timing.

use std::path::{Path, PathBuf};

/// The directory of the cgroup that `cgroups_path` names below `root` (the
/// unified root on v2, a controller's root on v1), for runc's cgroupfs
/// driver or, with `systemd`, its systemd driver. None when the path has
/// no meaning for that driver.
pub fn container_dir(root: &Path, cgroups_path: &str, systemd: bool) -> Option<PathBuf> {
    if !systemd {
        // containerd always passes an absolute path to the cgroupfs driver.
        return cgroups_path
            .starts_with('/')
            .then(|| root.join(cgroups_path.trim_start_matches('/')));
    }
    let mut parts = cgroups_path.splitn(3, ':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else {
        format!("{prefix}-{name}.scope")
    };
    Some(root.join(expand_slice(slice)?).join(unit))
}

/// systemd's nesting of a slice name: `a-b-c.slice` is
/// `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let name = slice.strip_suffix(".slice")?;
    if name.is_empty() || slice.contains('/') {
        return None;
    }
    let mut path = PathBuf::new();
    if name == "-" {
        return Some(path);
    }
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() {
            return None;
        }
        path.push(format!("{prefix}{component}.slice"));
        prefix.push_str(component);
        prefix.push('-');
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/sys/fs/cgroup";

    fn dir(p: &str, systemd: bool) -> Option<String> {
        container_dir(Path::new(ROOT), p, systemd).map(|d| d.display().to_string())
    }

    #[test]
    fn cgroupfs_paths_are_below_the_root() {
        assert_eq!(
            dir("/kubepods/burstable/pod1/c1", false).as_deref(),
            Some("/sys/fs/cgroup/kubepods/burstable/pod1/c1")
        );
        assert_eq!(dir("relative/c1", false), None);
    }

    #[test]
    fn systemd_paths_expand_the_slice_and_name_the_scope() {
        assert_eq!(
            dir("kubepods-burstable-pod1.slice:cri-containerd:c1", true).as_deref(),
            Some("/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-c1.scope")
        );
        assert_eq!(
            dir(":cri-containerd:c1", true).as_deref(),
            Some("/sys/fs/cgroup/system.slice/cri-containerd-c1.scope")
        );
        assert_eq!(
            dir("-.slice:runc:c1", true).as_deref(),
            Some("/sys/fs/cgroup/runc-c1.scope")
        );
        assert_eq!(
            dir("system.slice::sub.slice", true).as_deref(),
            Some("/sys/fs/cgroup/system.slice/sub.slice")
        );
        assert_eq!(dir("bad--name.slice:p:c", true), None);
        assert_eq!(dir("/kubepods/c1", true), None);
    }
}
