//! Create: a failure at any step leaves nothing behind, and two Creates of
//! one id cannot both win.

use containerd_shim_protos::{api, protobuf::well_known_types::any::Any, topics, ttrpc::Code};

use super::{code, settle, within, Ev, Fault, Shim};
use crate::volatile;

/// Nothing of `id` is left: no container, no runc state, no mount, no
/// volatile marker, and the id is free for the next Create.
async fn assert_nothing_left(shim: &Shim, id: &str, workdir: &std::path::Path) {
    // The unmount of a failed Create goes on detached.
    assert_eq!(
        within(shim.detached.wait_idle(std::time::Duration::from_secs(4))).await,
        0
    );
    let e = shim.svc.container(id).unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    assert!(!shim.runc().has_state(id), "runc state of {id} left");
    assert!(
        shim.platform.mounted().is_empty(),
        "{:?}",
        shim.platform.mounted()
    );
    assert!(
        !volatile::marker(workdir).exists(),
        "volatile marker {} left",
        volatile::marker(workdir).display()
    );
    assert!(
        !shim
            .events()
            .iter()
            .any(|e| *e == Ev::Other(topics::TASK_CREATE_EVENT_TOPIC.into())),
        "TaskCreate of a failed create"
    );
    // The id is free again: the same request succeeds now.
    let (req, _) = shim.request_with_rootfs(id);
    shim.svc.create(&req).await.unwrap();
    assert!(shim.runc().has_state(id));
}

#[tokio::test]
async fn create_failure_at_each_step_leaves_nothing_behind() {
    type Spoil = fn(&Shim, &mut containerd_shim_protos::api::CreateTaskRequest);
    let steps: [(&str, Spoil, Code); 6] = [
        (
            "bundle without config.json",
            |_, req| {
                std::fs::remove_file(std::path::Path::new(&req.bundle).join("config.json"))
                    .unwrap();
            },
            Code::INVALID_ARGUMENT,
        ),
        (
            "runtime options of an unknown type",
            |_, req| {
                req.options = Some(Any {
                    type_url: "example.com/Nope".into(),
                    ..Default::default()
                })
                .into();
            },
            Code::INVALID_ARGUMENT,
        ),
        (
            "mount fails",
            |shim, _| {
                *shim.platform.fail_mount.lock().unwrap() = Some("EINVAL");
            },
            Code::UNKNOWN,
        ),
        (
            "runc create fails",
            |shim, _| {
                shim.runc()
                    .fault("create", Fault::Fail("exec format error"), 1);
            },
            Code::UNKNOWN,
        ),
        (
            "runc create fails leaving state",
            |shim, _| {
                shim.runc().fault("create", Fault::FailLeavingState, 1);
            },
            Code::UNKNOWN,
        ),
        (
            "runc writes no pid file",
            |shim, _| {
                shim.runc().fault("create", Fault::NoPidFile, 1);
            },
            Code::UNKNOWN,
        ),
    ];
    for (what, spoil, want) in steps {
        let shim = Shim::new();
        let (mut req, workdir) = shim.request_with_rootfs("c1");
        spoil(&shim, &mut req);
        let e = shim.svc.create(&req).await.expect_err(what);
        assert_eq!(code(&e), want, "{what}: {e}");
        *shim.platform.fail_mount.lock().unwrap() = None;
        let bundle = std::path::Path::new(&req.bundle);
        if !bundle.join("config.json").exists() {
            std::fs::write(bundle.join("config.json"), super::OWN_PID_NS).unwrap();
        }
        assert_nothing_left(&shim, "c1", &workdir).await;
    }
}

#[tokio::test]
async fn failed_create_undoes_runc_state_and_mount_in_order() {
    let shim = Shim::new();
    let (req, _) = shim.request_with_rootfs("c1");
    shim.runc().fault("create", Fault::FailLeavingState, 1);
    shim.svc.create(&req).await.unwrap_err();
    assert_eq!(shim.runc().calls("delete --force", "c1"), 1);
    assert!(!shim.runc().has_state("c1"));
}

#[tokio::test]
async fn concurrent_create_of_one_id() {
    let shim = Shim::new();
    let gate = shim.runc().hold("create");
    let (a, _) = shim.request_with_rootfs("same");
    let b = shim.request("same");
    let svc = shim.svc.clone();
    let first = tokio::spawn(async move { svc.create(&a).await });
    gate.entered(1).await;
    // The second is refused at once, while the first is inside runc.
    let e = within(shim.svc.create(&b)).await.unwrap_err();
    assert_eq!(code(&e), Code::ALREADY_EXISTS, "{e}");
    assert!(
        e.to_string().contains("container same already exists"),
        "{e}"
    );
    gate.release();
    within(first).await.unwrap().unwrap();
    // The loser undid nothing of the winner's.
    assert!(shim.runc().has_state("same"));
    assert_eq!(shim.runc().calls("delete --force", "same"), 0);
    assert_eq!(shim.platform.mounted().len(), 1);
    assert_eq!(shim.runc().calls("create", "same"), 1);
    // And an id that exists is refused too.
    let e = shim.svc.create(&shim.request("same")).await.unwrap_err();
    assert_eq!(code(&e), Code::ALREADY_EXISTS, "{e}");
}

#[tokio::test]
async fn empty_id_is_invalid() {
    let shim = Shim::new();
    let e = shim.svc.create(&shim.request("")).await.unwrap_err();
    assert_eq!(code(&e), Code::INVALID_ARGUMENT, "{e}");
}

/// Container and exec ids become path components (bundle files, runc's
/// state directory, pid files): ids that are not containerd identifiers
/// (`[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters) are refused
/// with InvalidArgument naming the id, before runc or the disk see them.
#[tokio::test]
async fn ids_that_are_not_identifiers_are_refused() {
    let shim = Shim::new();
    let long = "a".repeat(77);
    for bad in [
        "../evil",
        "a/b",
        "..",
        ".",
        ".hidden",
        "a..b",
        "-a",
        "a b",
        long.as_str(),
    ] {
        let mut req = shim.request("ok");
        req.id = bad.into();
        let e = shim.svc.create(&req).await.unwrap_err();
        assert_eq!(code(&e), Code::INVALID_ARGUMENT, "{bad:?}: {e}");
        assert!(e.to_string().contains("container id"), "{bad:?}: {e}");
        assert_eq!(shim.runc().calls("create", bad), 0, "{bad:?}");
    }
    shim.run("c1").await;
    for bad in ["../e", "a/b", "..", "", "e\n", long.as_str()] {
        let req = api::ExecProcessRequest {
            id: "c1".into(),
            exec_id: bad.into(),
            spec: Some(Any {
                value: br#"{"args":["true"],"cwd":"/"}"#.to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let e = shim.svc.add_exec(&req).unwrap_err();
        assert_eq!(code(&e), Code::INVALID_ARGUMENT, "{bad:?}: {e}");
        assert!(e.to_string().contains("exec id"), "{bad:?}: {e}");
    }
    // What containerd and CRI generate passes.
    let mut ok = shim.request("ok");
    ok.id = format!("{}.a_b-c", "f".repeat(64));
    shim.svc.create(&ok).await.unwrap();
}

/// A Create that fails answers without waiting for its rootfs unmount,
/// which can take minutes on a loaded disk (the chaos soak: a restart of
/// containerd inside such a wait found the task half rolled back). The
/// unmount goes on detached, and a new Create of the id waits for it.
#[tokio::test]
async fn a_failed_create_answers_before_its_unmount_ends() {
    let shim = Shim::new();
    let (req, workdir) = shim.request_with_rootfs("c1");
    shim.runc()
        .fault("create", Fault::Fail("exec format error"), 1);
    let held = shim.platform.unmount_hold.hold();
    let e = within(shim.svc.create(&req)).await.unwrap_err();
    assert_eq!(code(&e), Code::UNKNOWN, "{e}");
    assert!(!shim.runc().has_state("c1"));
    assert_eq!(shim.platform.mounted().len(), 1, "the unmount is held");
    let svc = shim.svc.clone();
    let again = req.clone();
    let next = tokio::spawn(async move { svc.create(&again).await });
    settle().await;
    assert!(
        !next.is_finished(),
        "a new Create mounted over the rootfs still unmounting"
    );
    drop(held);
    within(next).await.unwrap().unwrap();
    assert_eq!(shim.platform.mounted().len(), 1);
    assert!(volatile::marker(&workdir).exists());
}

/// containerd answers a Create it gave up on (its caller went away, a
/// restart) with a Delete of the id, and then forgets the task. A Delete
/// that comes while the Create is still inside runc must not answer
/// NotFound and let the Create register a container nobody will ever
/// delete (the chaos soak: a pod's shim kept such a container's runc init
/// alive and never exited). The Create undoes its work instead, and the
/// Delete answers once it has.
#[tokio::test]
async fn delete_during_create_undoes_the_create() {
    let shim = Shim::new();
    let (req, workdir) = shim.request_with_rootfs("c1");
    let gate = shim.runc().hold("create");
    let svc = shim.svc.clone();
    let create = tokio::spawn(async move { svc.create(&req).await });
    gate.entered(1).await;
    let svc = shim.svc.clone();
    let delete = tokio::spawn(async move { svc.delete("c1", "").await });
    settle().await;
    assert!(
        !delete.is_finished(),
        "Delete answered while the Create was still running"
    );
    gate.release();
    let e = within(create).await.unwrap().unwrap_err();
    assert_eq!(code(&e), Code::ABORTED, "{e}");
    assert!(
        e.to_string()
            .contains("container c1 was deleted while it was being created"),
        "{e}"
    );
    within(delete).await.unwrap().unwrap();
    // The Delete answered only once runc's state was gone.
    assert!(!shim.runc().has_state("c1"));
    assert_eq!(shim.runc().calls("delete --force", "c1"), 1);
    assert_nothing_left(&shim, "c1", &workdir).await;
}
