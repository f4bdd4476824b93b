//! Create: a failure at any step leaves nothing behind, and two Creates of
//! one id cannot both win.

use containerd_shim_protos::{api, protobuf::well_known_types::any::Any, topics, ttrpc::Code};

use super::{code, within, Ev, Fault, Shim};
use crate::volatile;

/// Nothing of `id` is left: no container, no runc state, no mount, no
/// volatile marker, and the id is free for the next Create.
async fn assert_nothing_left(shim: &Shim, id: &str, workdir: &std::path::Path) {
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
    assert_eq!(
        within(shim.detached.wait_idle(std::time::Duration::ZERO)).await,
        0
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
