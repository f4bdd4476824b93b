//! The way of an exit: State answers at once, the init's TaskExit waits for
//! its Start and its execs and is published once, and runc's state goes at
//! the published exit.

use containerd_shim_protos::api::Status;

use super::{settle, within, Ev, Shim};

#[tokio::test]
async fn exit_with_execs_running_waits_then_publishes_once() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let e1 = shim.exec("c1", "e1").await;
    let e2 = shim.exec("c1", "e2").await;

    shim.reap(pid, 3).await;
    // Known at once: STOPPED with its status.
    let st = shim.svc.state("c1", "").unwrap();
    assert_eq!((st.status(), st.exit_status), (Status::STOPPED, 3));
    // Published only once the execs are gone; runc's state stays till then.
    assert_eq!(shim.exits_and_deletes(), vec![]);
    assert!(shim.runc().has_state("c1"));

    shim.reap(e1, 137).await;
    assert_eq!(shim.exits_and_deletes(), vec![Ev::Exit("e1".into(), 137)]);
    shim.reap(e2, 0).await;
    assert_eq!(
        shim.exits_and_deletes(),
        vec![
            Ev::Exit("e1".into(), 137),
            Ev::Exit("e2".into(), 0),
            Ev::Exit("c1".into(), 3),
        ]
    );
    // The early runc delete ran at the published exit.
    settle().await;
    assert!(!shim.runc().has_state("c1"));
    assert_eq!(shim.runc().calls("delete", "c1"), 1);

    // A second exit report of the same pid changes nothing.
    shim.reap(pid, 9).await;
    let d = within(shim.svc.delete("c1", "")).await.unwrap();
    assert_eq!(d.exit_status, 3);
    let exits = shim.exits_and_deletes();
    assert_eq!(
        exits
            .iter()
            .filter(|e| **e == Ev::Exit("c1".into(), 3))
            .count(),
        1
    );
    assert_eq!(exits.last(), Some(&Ev::Delete("c1".into(), 3)));
    // Delete did not call runc again: the early delete did the work.
    assert_eq!(shim.runc().calls("delete", "c1"), 1);
    assert_eq!(shim.runc().calls("delete --force", "c1"), 0);
}

#[tokio::test]
async fn exit_during_start_is_published_after_task_start() {
    let shim = Shim::new();
    let pid = shim.svc.create(&shim.request("c1")).await.unwrap();
    let gate = shim.runc().hold("start");
    let svc = shim.svc.clone();
    let start = tokio::spawn(async move { svc.start_init("c1").await });
    gate.entered(1).await;
    shim.reap(pid, 1).await;
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::STOPPED);
    assert_eq!(shim.exits_and_deletes(), vec![]);
    gate.release();
    within(start).await.unwrap().unwrap();
    let events = shim.events();
    let start_at = events
        .iter()
        .position(|e| {
            *e == Ev::Other(containerd_shim_protos::topics::TASK_START_EVENT_TOPIC.into())
        })
        .expect("TaskStart");
    let exit_at = events
        .iter()
        .position(|e| *e == Ev::Exit("c1".into(), 1))
        .expect("TaskExit");
    assert!(start_at < exit_at, "{events:?}");
}

#[tokio::test]
async fn exit_of_a_created_container_is_published_at_once() {
    let shim = Shim::new();
    let pid = shim.svc.create(&shim.request("c1")).await.unwrap();
    shim.reap(pid, 137).await;
    assert_eq!(shim.exits_and_deletes(), vec![Ev::Exit("c1".into(), 137)]);
    let d = within(shim.svc.delete("c1", "")).await.unwrap();
    assert_eq!(d.exit_status, 137);
}

#[tokio::test]
async fn exec_exit_is_published_at_once_and_init_keeps_running() {
    let shim = Shim::new();
    shim.run("c1").await;
    let e1 = shim.exec("c1", "e1").await;
    shim.reap(e1, 2).await;
    assert_eq!(shim.exits_and_deletes(), vec![Ev::Exit("e1".into(), 2)]);
    let w = within(shim.svc.wait("c1", "e1")).await.unwrap();
    assert_eq!(w.status, 2);
    let d = shim.svc.delete("c1", "e1").await.unwrap();
    assert_eq!(d.exit_status, 2);
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::RUNNING);
}

/// Issue 14 item 3: in a shared pid namespace an init that exits by itself
/// leaves its execs running, and its TaskExit waits for them: the shim
/// kills every process of the container (`runc kill --all`) at the exit.
#[tokio::test]
async fn init_exit_in_a_shared_pid_namespace_kills_the_rest() {
    let shim = Shim::new();
    let req = shim.request_with_spec("c1", super::POD_PID_NS);
    let pid = shim.svc.create(&req).await.unwrap();
    shim.svc.start_init("c1").await.unwrap();
    let e1 = shim.exec("c1", "e1").await;
    shim.reap(pid, 3).await;
    settle().await;
    assert_eq!(shim.runc().calls("kill --all", "c1"), 1);
    // What runc's kill does: the exec dies, and the exit is told.
    shim.reap(e1, 137).await;
    assert_eq!(
        shim.exits_and_deletes(),
        vec![Ev::Exit("e1".into(), 137), Ev::Exit("c1".into(), 3)]
    );
    settle().await;
    assert!(!shim.runc().has_state("c1"));
}

#[tokio::test]
async fn init_exit_in_its_own_pid_namespace_kills_nothing_more() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    shim.exec("c1", "e1").await;
    shim.reap(pid, 3).await;
    settle().await;
    assert_eq!(shim.runc().calls("kill --all", "c1"), 0);
}

/// A container of its own pid namespace with a cgroups path (runc, its
/// cgroupfs driver): the shim tears it down at the exit itself, and no
/// `runc delete` starts; Delete answers as before.
#[tokio::test]
async fn an_exited_container_is_torn_down_without_runc_where_the_shim_can() {
    const SPEC: &str = r#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/pod1/c1","namespaces":[{"type":"pid"}]}}"#;
    let shim = Shim::new();
    *shim.platform.teardown_works.lock().unwrap() = true;
    let pid = shim
        .svc
        .create(&shim.request_with_spec("c1", SPEC))
        .await
        .unwrap();
    shim.svc.start_init("c1").await.unwrap();
    shim.reap(pid, 4).await;
    settle().await;
    assert_eq!(
        *shim.platform.torn_down.lock().unwrap(),
        vec!["c1".to_string()]
    );
    assert!(!shim.runc().has_state("c1"));
    let d = within(shim.svc.delete("c1", "")).await.unwrap();
    assert_eq!(d.exit_status, 4);
    assert_eq!(shim.runc().calls("delete", "c1"), 0, "no runc delete");
    assert_eq!(
        shim.exits_and_deletes(),
        vec![Ev::Exit("c1".into(), 4), Ev::Delete("c1".into(), 4)]
    );
}

/// A teardown that stops short (a cgroup still busy) leaves the rest to
/// `runc delete`; a container the shim may not tear down never tries.
#[tokio::test]
async fn a_teardown_that_stops_short_is_finished_by_runc_delete() {
    const SPEC: &str = r#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/pod1/c1","namespaces":[{"type":"pid"}]}}"#;
    let shim = Shim::new();
    let pid = shim
        .svc
        .create(&shim.request_with_spec("c1", SPEC))
        .await
        .unwrap();
    shim.svc.start_init("c1").await.unwrap();
    shim.reap(pid, 4).await;
    settle().await;
    assert_eq!(
        *shim.platform.torn_down.lock().unwrap(),
        vec!["c1".to_string()]
    );
    assert!(!shim.runc().has_state("c1"));
    assert_eq!(shim.runc().calls("delete", "c1"), 1);
    within(shim.svc.delete("c1", "")).await.unwrap();

    // No cgroups path: runc's from the start.
    let pid = shim.run("c2").await;
    shim.reap(pid, 0).await;
    settle().await;
    assert_eq!(shim.platform.torn_down.lock().unwrap().len(), 1);
    assert_eq!(shim.runc().calls("delete", "c2"), 1);
}
