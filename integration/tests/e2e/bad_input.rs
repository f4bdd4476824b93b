//! Bad input, one case per test: each gets a clear error that names the
//! problem, with the right ttrpc (or CRI gRPC) code, and the pod's running
//! container is not affected.
//!
//! Most cases talk ttrpc to a directly started shim (see `direct.rs`); the
//! brisk.toml and runc cases also go through CRI with the handler's real
//! `ConfigPath` file rewritten between containers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use brisk_integration::cri::ContainerState;
use brisk_integration::fault::RuncWrapper;
use brisk_integration::{
    sys, ContainerSpec, Containerd, LinuxContainerResources, Pod, BRISK_HANDLER,
};
use containerd_shim_protos::api::{CreateTaskResponse, Mount, Status};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::ttrpc::Code;

use crate::common;
use crate::direct::{
    config_body_options, config_path_options, expect_err, status_of, CallResult, Fixture, Layer,
};

fn assert_not_mounted(bundle: &Path) {
    let target = bundle.join("rootfs");
    let m: Vec<_> = sys::mounts()
        .into_iter()
        .filter(|m| m.mount_point == target)
        .collect();
    assert!(m.is_empty(), "{} left mounted: {m:?}", target.display());
}

/// One bad-input case on a directly started shim: a [`Fixture`] named
/// `name`, the `case`, then the keeper must still run and nothing may be
/// left.
fn on_fixture(name: &str, case: impl FnOnce(&Fixture)) {
    let Some(f) = Fixture::new(name) else {
        return;
    };
    case(&f);
    f.assert_keeper_alive();
    f.finish();
}

/// A container of the fixture still to be created: a fresh id for `name`
/// and a bundle running `true`.
struct NewContainer<'a> {
    f: &'a Fixture,
    id: String,
    bundle: PathBuf,
}

impl<'a> NewContainer<'a> {
    fn new(f: &'a Fixture, name: &str) -> Self {
        let id = f.id(name);
        let bundle = f.bundle(&id, &["true"]);
        NewContainer { f, id, bundle }
    }

    /// Fresh layers for it over the image.
    fn layer(&self) -> Layer {
        self.f.layer(&self.id)
    }

    fn create(&self, rootfs: Vec<Mount>, options: Option<Any>) -> CallResult<CreateTaskResponse> {
        let f = self.f;
        f.create(&f.request(&self.id, &self.bundle, rootfs, options))
    }

    /// [`NewContainer::create`] must fail with `code` and an error naming
    /// each of `needles`, and leave nothing mounted on the rootfs.
    fn create_fails(
        &self,
        what: &str,
        rootfs: Vec<Mount>,
        options: Option<Any>,
        code: Code,
        needles: &[&str],
    ) {
        expect_err(what, self.create(rootfs, options), code, needles);
        assert_not_mounted(&self.bundle);
    }
}

// ------------------------------------------------------------ bundle

/// Create with the container's config.json changed by `spoil` must fail
/// with an error naming the file.
fn bad_config_json(name: &str, what: &str, spoil: impl FnOnce(&Path)) {
    on_fixture(name, |f| {
        let c = NewContainer::new(f, name);
        let config = c.bundle.join("config.json");
        spoil(&config);
        c.create_fails(
            what,
            c.layer().mounts(),
            None,
            Code::INVALID_ARGUMENT,
            &[
                &config.display().to_string(),
                "invalid or missing config.json",
            ],
        );
    });
}

#[test]
fn bad_config_json_malformed() {
    bad_config_json("badjson", "Create with a malformed config.json", |p| {
        std::fs::write(p, "{ this is not json").unwrap()
    });
}

#[test]
fn bad_config_json_missing() {
    bad_config_json("nojson", "Create without config.json", |p| {
        std::fs::remove_file(p).unwrap()
    });
}

/// Create with a bundle directory that does not exist; and a running
/// container whose bundle vanishes (rootfs detached, directory removed):
/// Exec fails with an error, State/Kill/Wait/Delete still work.
#[test]
fn bad_bundle_vanished() {
    on_fixture("vanished", |f| {
        let id = f.id("nobundle");
        let gone = f.work.join("no-such-bundle");
        let layer = f.layer(&id);
        expect_err(
            "Create with a missing bundle directory",
            f.create(&f.request(&id, &gone, layer.mounts(), None)),
            Code::INVALID_ARGUMENT,
            &[&gone.join("config.json").display().to_string()],
        );
        assert!(!gone.exists(), "the shim created the missing bundle");

        let id = f.id("vanishing");
        let layer = f.layer(&id);
        let bundle = f.bundle(&id, &["sleep", "1000"]);
        f.create(&f.request(&id, &bundle, layer.mounts(), None))
            .expect("create");
        f.shim.start_task(&id, "").expect("start");
        // What a careless cleanup does: detach the rootfs, remove the bundle.
        let rootfs =
            std::ffi::CString::new(bundle.join("rootfs").to_string_lossy().as_bytes()).unwrap();
        // SAFETY: umount2 with a valid C string.
        assert_eq!(
            unsafe { libc::umount2(rootfs.as_ptr(), libc::MNT_DETACH) },
            0
        );
        std::fs::remove_dir_all(&bundle).unwrap();
        let r = f.shim.exec_sync(&id, "e1", &["true"], &f.work);
        let e = r.expect_err("Exec in a container whose bundle vanished");
        eprintln!("exec without bundle: {e}");
        assert!(
            e.message.contains(&bundle.display().to_string()),
            "the error names the bundle path: {e}"
        );
        let st = f.shim.state(&id, "").expect("State");
        assert_eq!(status_of(&st), Status::RUNNING);
        f.shim.kill(&id, "", 9).expect("Kill");
        assert_eq!(f.wait_and_delete(&id), 137);
    });
}

// ------------------------------------------------------------ mounts

#[test]
fn bad_rootfs_source_missing() {
    on_fixture("nosource", |f| {
        let c = NewContainer::new(f, "nolower");
        let mut layer = c.layer();
        layer.lower = f.work.join("no-such-lower");
        c.create_fails(
            "Create with a missing overlay lowerdir",
            layer.mounts(),
            None,
            Code::UNKNOWN,
            &["lowerdir=", "no-such-lower", "does not exist"],
        );

        let bind = vec![Mount {
            type_: "bind".into(),
            source: f.work.join("no-such-dir").to_string_lossy().into_owned(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        }];
        NewContainer::new(f, "nobind").create_fails(
            "Create with a missing bind source",
            bind,
            None,
            Code::UNKNOWN,
            &["bind source", "no-such-dir", "does not exist"],
        );
    });
}

/// A mount of a filesystem type that does not exist.
fn nosuchfs() -> Mount {
    Mount {
        type_: "nosuchfs".into(),
        source: "none".into(),
        ..Default::default()
    }
}

#[test]
fn bad_mount_type_unknown() {
    on_fixture("fstype", |f| {
        NewContainer::new(f, "fstype").create_fails(
            "Create with an unknown mount type",
            vec![nosuchfs()],
            None,
            Code::UNKNOWN,
            &["unknown mount type \"nosuchfs\""],
        );
    });
}

#[test]
fn bad_mount_option_unknown() {
    on_fixture("mountopt", |f| {
        let c = NewContainer::new(f, "mountopt");
        let mut m = c.layer().mounts();
        m[0].options.push("no_such_option=1".into());
        c.create_fails(
            "Create with an unknown overlay option",
            m,
            None,
            Code::UNKNOWN,
            &["overlay mount", "no_such_option=1", "EINVAL"],
        );
    });
}

/// The first of two rootfs mounts succeeds, the second is bad: Create fails
/// and takes the first one down again (nothing left on `bundle/rootfs`).
#[test]
fn bad_second_mount_unmounts_the_first() {
    on_fixture("twomounts", |f| {
        let c = NewContainer::new(f, "twomounts");
        let mut m = c.layer().mounts();
        m.push(nosuchfs());
        c.create_fails(
            "Create whose second mount is bad",
            m,
            None,
            Code::UNKNOWN,
            &["unknown mount type \"nosuchfs\""],
        );
    });
}

// ------------------------------------------------------------ runc

#[test]
fn bad_runc_missing() {
    on_fixture("norunc", |f| {
        let c = NewContainer::new(f, "norunc");
        let opts = config_body_options("runc_binary = \"/nonexistent/runc\"\n");
        c.create_fails(
            "Create with runc_binary = /nonexistent/runc",
            c.layer().mounts(),
            Some(opts),
            Code::FAILED_PRECONDITION,
            &["cannot run runc binary /nonexistent/runc", "No such file"],
        );
    });
}

#[test]
fn bad_runc_create_fails() {
    on_fixture("runcfails", |f| {
        let wrapper = RuncWrapper::install(&f.cd.dir).expect("wrapper");
        let c = NewContainer::new(f, "runcfails");
        wrapper.fail("create", &[&c.id]).unwrap();
        let opts = config_body_options(&wrapper.toml_line());
        c.create_fails(
            "Create with a runc whose create fails",
            c.layer().mounts(),
            Some(opts),
            Code::UNKNOWN,
            &["runc create failed (exit status 1)", "fails on purpose"],
        );
        let state = Path::new("/run/containerd/brisk").join(&f.ns).join(&c.id);
        assert!(!state.exists(), "runc state {} left", state.display());
    });
}

/// A `runc create` killed at the shim's runc timeout after it made the
/// container's cgroups and state directory, and mounted over a file there
/// (runc's sealed copy of its binary), before it wrote the state (as runc
/// is, midway, on a loaded node): the failed Create leaves none of them.
/// `runc delete --force` removes only the state directory of a container
/// runc has no state of, and cannot while a mount is in it; the cgroups
/// and the mount are the shim's to sweep, and a runc delete that fails
/// (hung past its timeout) is tried again.
#[test]
fn bad_runc_create_killed_midway_leaves_nothing() {
    on_fixture("createkilled", |f| {
        let c = NewContainer::new(f, "createkilled");
        let cg = f.cd.ctr_cgroup(&c.id);
        let script = f.cd.dir.join("partial-runc");
        let body = format!(
            r#"#!/bin/sh
root=; prev=; create=; sub=
for a in "$@"; do
  [ "$prev" = "--root" ] && root=$a
  [ "$a" = create ] && create=1
  [ "$a" = delete ] && sub=delete
  prev=$a
done
# The first two deletes fail, as a runc delete hung past its timeout does.
if [ "$sub" = delete ]; then
  n=$(cat '{count}' 2>/dev/null || echo 0)
  echo $((n + 1)) > '{count}'
  [ "$n" -lt 2 ] && {{ echo 'delete fails on purpose' >&2; exit 1; }}
fi
if [ -n "$create" ]; then
  if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p "/sys/fs/cgroup{cg}"
  else
    for h in /sys/fs/cgroup/*; do
      [ -L "$h" ] || mkdir -p "$h{cg}" 2>/dev/null
    done
  fi
  mkdir -p "$root/{id}"
  touch "$root/{id}/runc.killed"
  mount --bind "$0" "$root/{id}/runc.killed"
  exec sleep 60
fi
exec '{runc}' "$@"
"#,
            cg = cg,
            id = c.id,
            count = f.cd.dir.join("deletes").display(),
            runc = brisk_integration::fault::real_runc().display(),
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let opts = config_body_options(&format!(
            "runc_binary = \"{}\"\nrunc_timeout_secs = 2\n",
            script.display()
        ));
        c.create_fails(
            "Create whose runc create is killed at its timeout",
            c.layer().mounts(),
            Some(opts),
            Code::DEADLINE_EXCEEDED,
            &["runc create timed out"],
        );
        let mut left = Vec::new();
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let dir = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                PathBuf::from(format!("/sys/fs/cgroup{cg}"))
            } else {
                PathBuf::from(format!("{}{cg}", h.path().display()))
            };
            if dir.exists() && !left.contains(&dir) {
                left.push(dir);
            }
        }
        assert!(
            left.is_empty(),
            "cgroups left by the failed create: {left:?}\n--- shim log ---\n{}",
            f.shim_log()
        );
        let state = Path::new("/run/containerd/brisk").join(&f.ns).join(&c.id);
        let mounted: Vec<_> = sys::mounts()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&state))
            .collect();
        assert!(
            mounted.is_empty(),
            "mounts left in the runc state: {mounted:?}"
        );
        // The first two runc deletes failed: the shim tries again, detached.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !state.exists(),
            "runc state {} left\n--- shim log ---\n{}",
            state.display(),
            f.shim_log()
        );
    });
}

// ------------------------------------------------------------ brisk.toml (ConfigBody)

#[test]
fn bad_brisk_toml_config_body() {
    on_fixture("badtoml", |f| {
        for (body, needles) in [
            ("runc_root = [", &["<ConfigBody>"][..]),
            (
                "runc_bianry = \"/usr/sbin/runc\"\n",
                &["<ConfigBody>", "runc_bianry"][..],
            ),
        ] {
            let c = NewContainer::new(f, "badtoml");
            c.create_fails(
                &format!("Create with brisk config {body:?}"),
                c.layer().mounts(),
                Some(config_body_options(body)),
                Code::INVALID_ARGUMENT,
                needles,
            );
        }
        let c = NewContainer::new(f, "nofile");
        let missing = Path::new("/nonexistent/brisk.toml");
        c.create_fails(
            "Create with ConfigPath naming a missing file",
            c.layer().mounts(),
            Some(config_path_options(missing)),
            Code::INVALID_ARGUMENT,
            &["/nonexistent/brisk.toml", "No such file"],
        );
    });
}

/// A value of the wrong type: the error must say which key.
#[test]
fn bad_brisk_toml_wrong_type() {
    on_fixture("tomltype", |f| {
        let c = NewContainer::new(f, "tomltype");
        let opts = config_body_options("volatile = \"yes\"\n");
        expect_err(
            "Create with brisk config volatile = \"yes\"",
            c.create(c.layer().mounts(), Some(opts)),
            Code::INVALID_ARGUMENT,
            &["<ConfigBody>", "volatile"],
        );
    });
}

// ------------------------------------------------------------ task calls

#[test]
fn bad_update_resources() {
    let Some(f) = Fixture::new("badupdate") else {
        return;
    };
    let k = f.keeper.clone();
    expect_err(
        "Update with resources that are not JSON",
        f.shim.update(&k, b"not json"),
        Code::INVALID_ARGUMENT,
        &["resources", &k],
    );
    expect_err(
        "Update with a CPU period that is not a number",
        f.shim.update(&k, br#"{"cpu":{"period":"x"}}"#),
        Code::INVALID_ARGUMENT,
        &["resources"],
    );
    let msg = expect_err(
        "Update with a 4 KiB memory limit",
        f.shim.update(&k, br#"{"memory":{"limit":4096}}"#),
        Code::UNKNOWN,
        &["runc update failed"],
    );
    assert!(msg.contains("memory"), "runc's reason is passed on: {msg}");
    expect_err(
        "Update of an unknown container",
        f.shim
            .update("no-such-container", br#"{"cpu":{"shares":512}}"#),
        Code::NOT_FOUND,
        &["no-such-container"],
    );
    f.assert_keeper_alive();
    f.shim
        .update(&k, br#"{"cpu":{"shares":512}}"#)
        .expect("a valid update still works");
    f.finish();
}

#[test]
fn bad_exec_id_unknown() {
    on_fixture("noexec", |f| {
        let k = f.keeper.clone();
        let needles = ["exec nope not found", k.as_str()];
        expect_err(
            "Start of an unknown exec",
            f.shim.start_task(&k, "nope"),
            Code::NOT_FOUND,
            &needles,
        );
        expect_err(
            "State of an unknown exec",
            f.shim.state(&k, "nope"),
            Code::NOT_FOUND,
            &needles,
        );
        expect_err(
            "Kill of an unknown exec",
            f.shim.kill(&k, "nope", 9),
            Code::NOT_FOUND,
            &needles,
        );
        expect_err(
            "Delete of an unknown exec",
            f.shim.delete(&k, "nope"),
            Code::NOT_FOUND,
            &needles,
        );
        expect_err(
            "Wait of an unknown exec",
            f.shim.wait(&k, "nope", Duration::from_secs(5)),
            Code::NOT_FOUND,
            &needles,
        );
        expect_err(
            "Exec with an empty exec id",
            f.shim.exec(&k, "", &["true"], None),
            Code::INVALID_ARGUMENT,
            &["exec id", "must not be empty"],
        );
        expect_err(
            "Exec with an exec id that is a path",
            f.shim.exec(&k, "../x", &["true"], None),
            Code::INVALID_ARGUMENT,
            &["exec id \"../x\"", "letters and digits"],
        );
    });
}

#[test]
fn bad_exec_id_duplicate() {
    on_fixture("dupexec", |f| {
        let k = f.keeper.clone();
        f.shim
            .exec(&k, "dup", &["sleep", "1000"], None)
            .expect("exec");
        f.shim.start_task(&k, "dup").expect("start exec");
        expect_err(
            "Exec with the id of a running exec",
            f.shim.exec(&k, "dup", &["true"], None),
            Code::ALREADY_EXISTS,
            &["exec dup", &k, "already exists"],
        );
        expect_err(
            "Start of a running exec",
            f.shim.start_task(&k, "dup"),
            Code::FAILED_PRECONDITION,
            &["cannot start a process that is running"],
        );
        let st = f.shim.state(&k, "dup").expect("State of dup");
        assert_eq!(
            status_of(&st),
            Status::RUNNING,
            "the first exec is untouched"
        );
        f.shim.kill(&k, "dup", 9).expect("kill exec");
        let w = f
            .shim
            .wait(&k, "dup", Duration::from_secs(10))
            .expect("wait exec");
        assert_eq!(w.exit_status, 137);
        f.shim.delete(&k, "dup").expect("delete exec");
        // Gone, so the id is free again.
        let (code, out) = f
            .shim
            .exec_sync(&k, "dup", &["echo", "again"], &f.work)
            .expect("exec id reused after delete");
        assert_eq!((code, out.as_str()), (0, "again\n"));
    });
}

#[test]
fn bad_create_existing_id() {
    on_fixture("dupid", |f| {
        let k = f.keeper.clone();
        let bundle = f.bundle("dupid-other-bundle", &["true"]);
        let layer = f.layer("dupid-other");
        expect_err(
            "Create of an id that exists",
            f.shim.create(&f.request(&k, &bundle, layer.mounts(), None)),
            Code::ALREADY_EXISTS,
            &[&format!("container {k} already exists")],
        );
        assert_not_mounted(&bundle);
    });
}

/// Two Creates of one new id at the same time (different bundles): one
/// wins, the other fails, and the winner's container works.
#[test]
fn bad_create_same_id_concurrently() {
    on_fixture("raceid", |f| {
        let id = f.id("raceid");
        let reqs: Vec<_> = (0..2)
            .map(|i| {
                let b = f.bundle(&format!("{id}-bundle{i}"), &["sleep", "1000"]);
                let l = f.layer(&format!("{id}-layer{i}"));
                (b.clone(), f.request(&id, &b, l.mounts(), None))
            })
            .collect();
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = reqs.iter().map(|(_, r)| s.spawn(|| f.create(r))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        eprintln!("concurrent creates: {results:?}");
        let ok: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(ok.len(), 1, "exactly one Create wins: {results:?}");
        let loser = 1 - ok[0];
        // The winner's container is intact.
        let st = f.shim.state(&id, "").expect("State of the winner");
        assert_eq!(status_of(&st), Status::CREATED, "winner: {st:?}");
        f.shim
            .start_task(&id, "")
            .unwrap_or_else(|e| panic!("start of the winning Create: {e}\n{}", f.shim_log()));
        let (code, out) = f
            .shim
            .exec_sync(&id, "e1", &["echo", "won"], &f.work)
            .expect("exec in the winner");
        assert_eq!((code, out.as_str()), (0, "won\n"));
        assert_not_mounted(&reqs[loser].0);
        let e = results[loser].as_ref().unwrap_err();
        assert_eq!(
            e.code,
            Code::ALREADY_EXISTS,
            "the loser is told the id exists: {e}"
        );
    });
}

#[test]
fn bad_delete_twice() {
    on_fixture("deltwice", |f| {
        let id = f.id("deltwice");
        let bundle = f.bundle(&id, &["sh", "-c", "exit 2"]);
        let layer = f.layer(&id);
        f.create(&f.request(&id, &bundle, layer.mounts(), None))
            .expect("create");
        expect_err(
            "Delete of a created (not started) container's exec",
            f.shim.delete(&id, "nope"),
            Code::NOT_FOUND,
            &["exec nope not found"],
        );
        f.shim.start_task(&id, "").expect("start");
        let w = f.shim.wait(&id, "", Duration::from_secs(10)).expect("wait");
        assert_eq!(w.exit_status, 2);
        let d = f.shim.delete(&id, "").expect("first Delete");
        assert_eq!(d.exit_status, 2);
        expect_err(
            "second Delete",
            f.shim.delete(&id, ""),
            Code::NOT_FOUND,
            &[&format!("container {id} not found")],
        );
        // Delete of a running container is refused.
        expect_err(
            "Delete of a running container",
            f.shim.delete(&f.keeper, ""),
            Code::FAILED_PRECONDITION,
            &["cannot delete a process that is running"],
        );
    });
}

#[test]
fn bad_kill_unknown_id() {
    on_fixture("killunknown", |f| {
        expect_err(
            "Kill of an unknown container",
            f.shim.kill("no-such-container", "", 9),
            Code::NOT_FOUND,
            &["container no-such-container not found"],
        );
        expect_err(
            "State of an unknown container",
            f.shim.state("no-such-container", ""),
            Code::NOT_FOUND,
            &["container no-such-container not found"],
        );
        expect_err(
            "Kill with an invalid signal",
            f.shim.kill(&f.keeper, "", 12345),
            Code::INVALID_ARGUMENT,
            &["invalid signal 12345"],
        );
    });
}

// ------------------------------------------------------------ through CRI

/// A brisk pod with one running container, whose handler's brisk.toml the
/// test rewrites before starting more containers.
struct CriCase {
    cd: Containerd,
    pod: Pod,
    keep: String,
    n: u32,
}

impl CriCase {
    fn new(name: &str) -> Option<CriCase> {
        let cd = common::start_with(BRISK_HANDLER, common::wrapper_options())?;
        // The wrapper, idle: runc as usual.
        let _ = RuncWrapper::install(&cd.dir).expect("wrapper");
        let pod = cd.cri().run_pod_sandbox(BRISK_HANDLER, name).expect("pod");
        let keep = cd
            .cri()
            .run_container(&pod, &ContainerSpec::new("keep", &["sleep", "1000"]))
            .expect("keep");
        Some(CriCase {
            cd,
            pod,
            keep,
            n: 0,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.cd.dir.join("brisk.toml")
    }

    fn set_config(&self, body: &str) {
        std::fs::write(self.config_path(), body).unwrap();
    }

    /// Create and start a container; StartContainer's error, if any. A
    /// container that failed to start is removed.
    fn try_start(&mut self) -> Result<String, String> {
        self.n += 1;
        let cri = self.cd.cri();
        let id = cri
            .create_container(
                &self.pod,
                &ContainerSpec::new(&format!("c{}", self.n), &["true"]),
            )
            .map_err(|e| format!("CreateContainer: {e:#}"))?;
        match cri.start_container(&id) {
            Ok(()) => Ok(id),
            Err(e) => {
                let st = cri.container_status(&id).expect("status");
                eprintln!(
                    "after the failed start: state {:?} reason {:?} message {:?}",
                    ContainerState::try_from(st.state),
                    st.reason,
                    st.message
                );
                cri.remove_container(&id).expect("RemoveContainer");
                Err(format!("{e:#}"))
            }
        }
    }

    /// Starting a container must fail with an error naming each of
    /// `needles`, and the running container must be unaffected.
    fn start_fails(&mut self, what: &str, needles: &[&str]) {
        let e = self.try_start().expect_err(what);
        for n in needles {
            assert!(e.contains(n), "{what}: error lacks {n:?}: {e}");
        }
        eprintln!("{what}: {e}");
        self.assert_keep_alive();
    }

    fn assert_keep_alive(&self) {
        let cri = self.cd.cri();
        let r = cri
            .exec_sync(&self.keep, &["echo", "alive"], Duration::from_secs(10))
            .expect("ExecSync in the running container");
        assert_eq!((r.exit_code, r.stdout_str().as_str()), (0, "alive\n"));
        assert_eq!(
            cri.container_status(&self.keep).unwrap().state,
            ContainerState::ContainerRunning as i32
        );
    }

    fn finish(self) {
        common::remove_pod_and_finish(self.cd, &self.pod);
    }
}

#[test]
fn bad_brisk_toml_via_cri() {
    let Some(mut c) = CriCase::new("badtoml") else {
        return;
    };
    let path = c.config_path().display().to_string();
    c.set_config("runc_root = [\n");
    c.start_fails(
        "StartContainer with a brisk.toml that is not TOML",
        &["InvalidArgument", &path],
    );
    c.set_config("runc_bianry = \"/usr/sbin/runc\"\n");
    c.start_fails(
        "StartContainer with an unknown brisk.toml key",
        &["InvalidArgument", &path, "runc_bianry"],
    );
    std::fs::remove_file(c.config_path()).unwrap();
    c.start_fails(
        "StartContainer with the brisk.toml missing",
        &["InvalidArgument", &path],
    );
    c.set_config("");
    c.try_start().expect("an empty brisk.toml means defaults");
    c.finish();
}

#[test]
fn bad_runc_via_cri() {
    let Some(mut c) = CriCase::new("badrunc") else {
        return;
    };
    c.set_config("runc_binary = \"/nonexistent/runc\"\n");
    c.start_fails(
        "StartContainer with runc_binary = /nonexistent/runc",
        &[
            "FailedPrecondition",
            "cannot run runc binary /nonexistent/runc",
        ],
    );
    let wrapper = RuncWrapper::install(&c.cd.dir).expect("wrapper");
    c.set_config(&wrapper.toml_line());
    wrapper.fail("create", &[]).unwrap();
    c.start_fails(
        "StartContainer with a runc whose create fails",
        &["runc create failed (exit status 1)", "fails on purpose"],
    );
    wrapper.unfail("create");
    c.try_start().expect("runc works again");
    c.finish();
}

#[test]
fn bad_update_via_cri() {
    let Some(c) = CriCase::new("badupdatecri") else {
        return;
    };
    let cri = c.cd.cri();
    let e = cri
        .update_container_resources(
            &c.keep,
            LinuxContainerResources {
                memory_limit_in_bytes: 4096,
                ..Default::default()
            },
        )
        .expect_err("a 4 KiB memory limit");
    let e = format!("{e:#}");
    eprintln!("UpdateContainerResources with a 4 KiB memory limit: {e}");
    assert!(e.contains("runc update failed"), "{e}");
    c.assert_keep_alive();
    cri.update_container_resources(
        &c.keep,
        LinuxContainerResources {
            cpu_shares: 256,
            ..Default::default()
        },
    )
    .expect("a valid update still works");
    c.finish();
}
