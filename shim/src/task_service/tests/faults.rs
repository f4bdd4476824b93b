//! The lifecycle under faults (issue 14, items 1, 2, 5 and 6): a Delete
//! that failed can be retried, every exit is told once and before
//! TaskDelete, the early runc delete waits for runc calls still running,
//! and errors keep their meaning.

use containerd_shim_protos::{
    api::{self, Status},
    protobuf::well_known_types::any::Any,
    ttrpc::Code,
};

use super::{code, settle, within, Ev, Fault, Shim};
use crate::volatile;

/// Item 1: runc delete fails (a process in D state, a runc timeout: the
/// I/O-pressure case), so Delete fails; nothing is committed, and the
/// retry finishes the job.
#[tokio::test]
async fn a_failed_delete_can_be_retried_and_finishes_the_job() {
    let shim = Shim::new();
    let (req, workdir) = shim.request_with_rootfs("c1");
    let pid = shim.svc.create(&req).await.unwrap();
    shim.svc.start_init("c1").await.unwrap();
    // Fails for the early delete at the exit and for the first Delete.
    shim.runc()
        .fault("delete", Fault::Fail("device or resource busy"), 2);
    shim.runc()
        .fault("delete --force", Fault::Fail("timed out"), 2);
    shim.reap(pid, 0).await;
    settle().await;

    let e = within(shim.svc.delete("c1", "")).await.unwrap_err();
    assert_ne!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    // Nothing committed: the task is there, stopped, its rootfs mounted.
    let st = shim.svc.state("c1", "").unwrap();
    assert_eq!((st.status(), st.exit_status), (Status::STOPPED, 0));
    assert_eq!(shim.platform.mounted().len(), 1);
    assert!(shim.runc().has_state("c1"));
    assert_eq!(shim.exits_and_deletes(), vec![Ev::Exit("c1".into(), 0)]);

    let d = within(shim.svc.delete("c1", ""))
        .await
        .unwrap_or_else(|e| panic!("retried Delete: {e}"));
    assert_eq!(d.exit_status, 0);
    assert!(!shim.runc().has_state("c1"));
    within(shim.detached.wait_idle(std::time::Duration::from_secs(5))).await;
    assert!(shim.platform.mounted().is_empty());
    assert!(!volatile::marker(&workdir).exists());
    assert_eq!(
        shim.exits_and_deletes(),
        vec![Ev::Exit("c1".into(), 0), Ev::Delete("c1".into(), 0)]
    );
    let e = shim.svc.delete("c1", "").await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
}

/// The long chaos run's fb16ff88: the early `runc delete` at the exit
/// timed out twice (a runc hung for 5 s), and containerd's Delete, sent by
/// its recovery after a restart, failed at once on that outcome; CRI kept
/// the container UNKNOWN until a StopContainer. The hang had passed: Delete
/// tries once more itself before it fails.
#[tokio::test]
async fn delete_after_a_failed_early_runc_delete_tries_again_itself() {
    let shim = Shim::new();
    let (req, _workdir) = shim.request_with_rootfs("c1");
    let pid = shim.svc.create(&req).await.unwrap();
    shim.svc.start_init("c1").await.unwrap();
    // Only the early delete at the exit fails (plain, then forced), and
    // its forced try is held until Delete waits for it.
    shim.runc()
        .fault("delete", Fault::Fail("timed out after 3s"), 1);
    shim.runc()
        .fault("delete --force", Fault::Fail("timed out after 3s"), 1);
    let forced = shim.runc().hold("delete --force");
    shim.reap(pid, 7).await;
    forced.entered(1).await;
    let svc = shim.svc.clone();
    let delete = tokio::spawn(async move { svc.delete("c1", "").await });
    settle().await;
    forced.release();

    let d = within(delete)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("Delete after a failed early runc delete: {e}"));
    assert_eq!(d.exit_status, 7);
    assert!(!shim.runc().has_state("c1"));
    assert_eq!(
        shim.exits_and_deletes(),
        vec![Ev::Exit("c1".into(), 7), Ev::Delete("c1".into(), 7)]
    );
}

/// Item 1, a created container: its forced runc delete fails once.
#[tokio::test]
async fn a_failed_delete_of_a_created_container_can_be_retried() {
    let shim = Shim::new();
    let (req, _) = shim.request_with_rootfs("c1");
    shim.svc.create(&req).await.unwrap();
    shim.runc()
        .fault("delete --force", Fault::Fail("timed out"), 2);
    within(shim.svc.delete("c1", "")).await.unwrap_err();
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::CREATED);
    assert_eq!(shim.platform.mounted().len(), 1);
    within(shim.svc.delete("c1", "")).await.unwrap();
    assert!(!shim.runc().has_state("c1"));
    within(shim.detached.wait_idle(std::time::Duration::from_secs(5))).await;
    assert!(shim.platform.mounted().is_empty());
}

/// Item 2: a Delete that comes while the init's exit is withheld (an exec
/// still runs) waits for the exit to be told; TaskExit comes once, before
/// TaskDelete.
#[tokio::test]
async fn delete_does_not_overtake_an_unpublished_exit() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let e1 = shim.exec("c1", "e1").await;
    shim.reap(pid, 3).await;
    let svc = shim.svc.clone();
    let delete = tokio::spawn(async move { svc.delete("c1", "").await });
    settle().await;
    assert!(
        !delete.is_finished(),
        "Delete answered before the exit was told"
    );
    shim.reap(e1, 0).await;
    let d = within(delete).await.unwrap().unwrap();
    assert_eq!(d.exit_status, 3);
    assert_eq!(
        shim.exits_and_deletes(),
        vec![
            Ev::Exit("e1".into(), 0),
            Ev::Exit("c1".into(), 3),
            Ev::Delete("c1".into(), 3)
        ]
    );
}

/// Item 2: Wait returns once the exit is recorded for publication, not at
/// the reap while the exit is still withheld.
#[tokio::test]
async fn wait_returns_once_the_exit_is_published() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let e1 = shim.exec("c1", "e1").await;
    let svc = shim.svc.clone();
    let wait = tokio::spawn(async move { svc.wait("c1", "").await });
    shim.reap(pid, 3).await;
    assert!(!wait.is_finished(), "Wait returned an exit not yet told");
    shim.reap(e1, 0).await;
    assert_eq!(within(wait).await.unwrap().unwrap().status, 3);
    assert!(shim.exits_and_deletes().contains(&Ev::Exit("c1".into(), 3)));
}

/// CRI records a container's exit from its Wait and its OOM kill from the
/// TaskOOM event, in two goroutines: a Wait answered while the TaskOOM
/// still waits to reach containerd (its connection being remade after a
/// restart) has the container recorded "Error", and a client that reads
/// that status and removes the container never sees OOMKilled (the chaos
/// soak's 5726be44). Wait answers once containerd has taken the events
/// queued before the exit.
#[tokio::test]
async fn wait_answers_once_containerd_has_the_events_before_the_exit() {
    let (shim, handled) = Shim::with_events_held();
    let pid = shim.run("c1").await;
    let svc = shim.svc.clone();
    let wait = tokio::spawn(async move { svc.wait("c1", "").await });
    shim.reap(pid, 137).await;
    let queued = shim.events().len() as u64;
    assert!(
        shim.exits_and_deletes()
            .contains(&Ev::Exit("c1".into(), 137)),
        "the exit is told"
    );
    settle().await;
    assert!(
        !wait.is_finished(),
        "Wait answered before containerd had the events before the exit"
    );
    handled.through(queued);
    assert_eq!(within(wait).await.unwrap().unwrap().status, 137);
}

/// Item 5: the early runc delete does not run beside a runc call on the
/// same container that is still running detached (here a hung update,
/// answered "exiting" at the exit).
#[tokio::test]
async fn early_runc_delete_waits_for_runc_calls_still_running() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let gate = shim.runc().hold("update");
    let svc = shim.svc.clone();
    let update = tokio::spawn(async move {
        let req = api::UpdateTaskRequest {
            id: "c1".into(),
            resources: Some(Any {
                value: b"{}".to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        svc.update(&req).await
    });
    gate.entered(1).await;
    shim.reap(pid, 0).await;
    within(update).await.unwrap().unwrap_err();
    settle().await;
    assert_eq!(
        shim.runc().calls("delete", "c1"),
        0,
        "runc delete ran beside a running runc update"
    );
    gate.release();
    settle().await;
    settle().await;
    assert_eq!(shim.runc().calls("delete", "c1"), 1);
    assert!(!shim.runc().has_state("c1"));
    within(shim.svc.delete("c1", "")).await.unwrap();
}

/// Item 6: Kill of an exec that was added but never started.
#[tokio::test]
async fn kill_of_an_exec_that_never_started_is_a_failed_precondition() {
    let shim = Shim::new();
    shim.run("c1").await;
    let req = api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        spec: Some(Any {
            value: br#"{"args":["true"],"cwd":"/"}"#.to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    shim.svc.add_exec(&req).unwrap();
    let e = shim.svc.kill("c1", "e1", 9, false).await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
}

/// Item 6: runc's "executable file not found" is an exec that failed, not
/// a container or process that does not exist.
#[tokio::test]
async fn exec_of_a_missing_binary_is_not_not_found() {
    let shim = Shim::new();
    shim.run("c1").await;
    shim.runc().fault(
        "exec",
        Fault::Fail(
            "exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH",
        ),
        1,
    );
    let req = api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        spec: Some(Any {
            value: br#"{"args":["nope"],"cwd":"/"}"#.to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    shim.svc.add_exec(&req).unwrap();
    let e = shim.svc.start_exec("c1", "e1").await.unwrap_err();
    assert_ne!(code(&e), Code::NOT_FOUND, "{e}");
    assert!(e.to_string().contains("executable file not found"), "{e}");
}

/// Item 6: a panic while one request is served answers that request with
/// an error; the shim goes on serving the pod's other containers.
#[tokio::test]
async fn a_panic_in_one_request_does_not_take_down_the_shim() {
    use containerd_shim_protos::shim_async::Task;
    let ctx = super::ctx();
    let shim = Shim::new();
    shim.svc.create(&shim.request("c1")).await.unwrap();
    shim.run("c2").await;
    shim.runc().fault("start", Fault::Panic, 1);
    let start = |id: &str| api::StartRequest {
        id: id.into(),
        ..Default::default()
    };
    let r = Task::start(&shim.svc, &ctx, start("c1")).await;
    assert!(r.is_err(), "{r:?}");
    // The other container still answers, runc calls included.
    let st = Task::state(
        &shim.svc,
        &ctx,
        api::StateRequest {
            id: "c2".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(st.status(), Status::RUNNING);
    Task::kill(
        &shim.svc,
        &ctx,
        api::KillRequest {
            id: "c2".into(),
            signal: 15,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// A signal no kernel has is the caller's error, named as such, whichever
/// way the Kill would go (pidfd or `runc kill`), and it starts no runc.
#[tokio::test]
async fn kill_with_an_invalid_signal_is_an_invalid_argument() {
    let shim = Shim::new();
    let req = shim.request_with_spec("c1", super::POD_PID_NS);
    shim.svc.create(&req).await.unwrap();
    shim.svc.start_init("c1").await.unwrap();
    for all in [false, true] {
        let e = shim.svc.kill("c1", "", 12345, all).await.unwrap_err();
        assert_eq!(code(&e), Code::INVALID_ARGUMENT, "{e}");
        assert!(e.to_string().contains("invalid signal 12345"), "{e}");
    }
    assert_eq!(shim.runc().calls("kill", "c1"), 0);
    assert_eq!(shim.runc().calls("kill --all", "c1"), 0);
    // The container goes on: a valid signal still reaches runc.
    shim.svc.kill("c1", "", 15, false).await.unwrap();
    assert_eq!(shim.runc().calls("kill", "c1"), 1);
}
