//! The teardown of a container whose processes have all exited, done by
//! the shim itself rather than by `runc delete`.
//!
//! For such a container `runc delete` removes the container's cgroups and
//! runc's state directory, and runs the spec's poststop hooks. It costs
//! tens of milliseconds, most of them a Go runtime starting, and CRI waits
//! for it before it reports the container EXITED: its Delete waits for the
//! delete begun at the exit (`task_service/exit.rs`). Where removing those
//! two things is all `runc delete` would do, the shim does it in well under
//! a millisecond:
//!
//! * the runtime is runc: another runtime keeps other state;
//! * runc's cgroupfs driver: with systemd's, the container's scope is
//!   systemd's to stop;
//! * a pid namespace of the container's own: the kernel ended every other
//!   process of the container with its init (in a shared one, runc kills
//!   what is left, by cgroup);
//! * no poststop hook and no Intel RDT group, which only runc handles.
//!
//! Anything else, or a step that does not go as planned (a cgroup still
//! busy), leaves the rest to `runc delete`, as before.

use std::{
    io,
    path::{Path, PathBuf},
};

use tracing::{debug, warn};

use crate::{bundle_spec::BundleSpec, cgroup, config::RuntimeConfig, runc_leftovers};

/// What the shim removes itself once the container's processes are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// runc's state directory of the container, `<runc root>/<id>`.
    pub state_dir: PathBuf,
    /// The spec's `linux.cgroupsPath` (an absolute path, cgroupfs driver).
    pub cgroups_path: String,
}

impl Teardown {
    /// The teardown of container `id`, created from `spec` with `cfg`,
    /// when the shim may do it itself (see the module's doc); else None.
    pub fn plan(id: &str, spec: &BundleSpec, cfg: &RuntimeConfig) -> Option<Self> {
        let runc = cfg.runc_binary.file_name().is_some_and(|n| n == "runc");
        if !runc
            || cfg.systemd_cgroup
            || !spec.own_pid_namespace()
            || spec.has_poststop_hooks()
            || spec.has_intel_rdt()
        {
            return None;
        }
        let cgroups_path = spec.cgroups_path().filter(|p| p.starts_with('/'))?;
        Some(Teardown {
            state_dir: cfg.runc_root.join(id),
            cgroups_path: cgroups_path.to_string(),
        })
    }

    /// Removes the container's cgroups, then runc's state directory. True
    /// when both are gone; false when `runc delete` must finish the job.
    /// Blocking: a cgroup still busy is tried again for a moment.
    pub fn run(&self) -> bool {
        match self.remove() {
            Ok(cgroups) => {
                debug!(state = %self.state_dir.display(), cgroups, "container torn down without runc");
                true
            }
            Err(e) => {
                warn!(state = %self.state_dir.display(), error = %e, "teardown without runc stopped; runc delete goes on");
                false
            }
        }
    }

    fn remove(&self) -> io::Result<usize> {
        let cgroups = cgroup::remove_exited(&self.cgroups_path)?;
        remove_state_dir(&self.state_dir)?;
        Ok(cgroups)
    }
}

/// Removes runc's state directory of a container (runc keeps no mount there
/// once the container runs; one left by a runc killed midway is detached
/// first). Gone already is fine.
fn remove_state_dir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        // Never follow a link out of runc's root.
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )))
        }
        Ok(_) => {}
    }
    runc_leftovers::unmount_under(dir);
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = r#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/pod1/c1","namespaces":[{"type":"pid"}]}}"#;

    fn spec(json: &str) -> BundleSpec {
        BundleSpec::parse(json.as_bytes()).unwrap()
    }

    fn cfg(runc: &str, systemd: bool) -> RuntimeConfig {
        let mut c = RuntimeConfig::defaults("k8s.io");
        c.runc_binary = PathBuf::from(runc);
        c.systemd_cgroup = systemd;
        c
    }

    #[test]
    fn the_shim_tears_down_only_what_runc_delete_would_merely_remove() {
        let t = Teardown::plan("c1", &spec(OWN), &cfg("runc", false)).unwrap();
        assert_eq!(t.cgroups_path, "/pod1/c1");
        assert!(t.state_dir.ends_with("k8s.io/c1"));
        assert!(Teardown::plan("c1", &spec(OWN), &cfg("/opt/bin/runc", false)).is_some());
        // Another runtime, systemd's driver: theirs.
        assert!(Teardown::plan("c1", &spec(OWN), &cfg("crun", false)).is_none());
        assert!(Teardown::plan("c1", &spec(OWN), &cfg("runc", true)).is_none());
        // A shared pid namespace, hooks, RDT, no cgroups path: runc's.
        let shared = r#"{"ociVersion":"1","linux":{"cgroupsPath":"/p/c","namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#;
        let hooked = r#"{"ociVersion":"1","hooks":{"poststop":[{"path":"/x"}]},"linux":{"cgroupsPath":"/p/c","namespaces":[{"type":"pid"}]}}"#;
        let rdt = r#"{"ociVersion":"1","linux":{"intelRdt":{},"cgroupsPath":"/p/c","namespaces":[{"type":"pid"}]}}"#;
        let no_path = r#"{"ociVersion":"1","linux":{"namespaces":[{"type":"pid"}]}}"#;
        for s in [shared, hooked, rdt, no_path] {
            assert!(
                Teardown::plan("c1", &spec(s), &cfg("runc", false)).is_none(),
                "{s}"
            );
        }
    }

    #[test]
    fn the_state_directory_goes_and_a_link_there_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c1");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("state.json"), "{}").unwrap();
        remove_state_dir(&state).unwrap();
        assert!(!state.exists());
        remove_state_dir(&state).unwrap();

        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &state).unwrap();
        assert!(remove_state_dir(&state).is_err());
        assert!(elsewhere.is_dir());
    }
}
