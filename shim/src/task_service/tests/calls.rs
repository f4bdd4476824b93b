//! Calls on a container around its exit: answered from what the shim
//! knows, at once, and a runc call in flight answers at the exit.

use containerd_shim_protos::{
    api::{self, Status},
    protobuf::well_known_types::any::Any,
    ttrpc::Code,
};

use super::{code, within, Ev, Shim};

fn update_request(id: &str) -> api::UpdateTaskRequest {
    api::UpdateTaskRequest {
        id: id.into(),
        resources: Some(Any {
            value: br#"{"cpu":{"shares":512}}"#.to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn kill_update_and_state_during_the_exit() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let e1 = shim.exec("c1", "e1").await;

    // An Update whose runc hangs answers "exiting" at the exit.
    let gate = shim.runc().hold("update");
    let svc = shim.svc.clone();
    let update = tokio::spawn(async move { svc.update(&update_request("c1")).await });
    gate.entered(1).await;
    shim.reap(pid, 137).await;
    let e = within(update).await.unwrap().unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    assert!(e.to_string().contains("exiting"), "{e}");

    // The exit is not published yet (e1 runs): every call answers anyway.
    assert_eq!(shim.exits_and_deletes(), vec![]);
    let st = shim.svc.state("c1", "").unwrap();
    assert_eq!((st.status(), st.exit_status), (Status::STOPPED, 137));
    let e = shim.svc.update(&update_request("c1")).await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    assert!(e.to_string().contains("task c1 is exiting"), "{e}");
    let e = shim.svc.kill("c1", "", 9, false).await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    let listed: Vec<u32> = within(shim.svc.pids("c1"))
        .await
        .unwrap()
        .processes
        .iter()
        .map(|p| p.pid)
        .collect();
    assert_eq!(listed, vec![pid as u32], "the exited init, until Delete");
    let e = shim.svc.stats("c1").await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    // runc update still hangs, detached: nothing waited for it.
    assert_eq!(shim.detached.pending(), 1);
    gate.release();

    shim.reap(e1, 137).await;
    assert_eq!(
        shim.exits_and_deletes(),
        vec![Ev::Exit("e1".into(), 137), Ev::Exit("c1".into(), 137)]
    );
    let w = within(shim.svc.wait("c1", "")).await.unwrap();
    assert_eq!(w.status, 137);
    // Kill of the exited init and of the exited exec: NotFound.
    let e = shim.svc.kill("c1", "", 9, true).await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
    let e = shim.svc.kill("c1", "e1", 9, false).await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
}

#[tokio::test]
async fn kill_in_flight_answers_ok_at_the_exit() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let gate = shim.runc().hold("kill");
    let svc = shim.svc.clone();
    let kill = tokio::spawn(async move { svc.kill("c1", "", 9, false).await });
    gate.entered(1).await;
    shim.reap(pid, 137).await;
    within(kill).await.unwrap().unwrap();
    gate.release();
}

#[tokio::test]
async fn one_pause_or_resume_at_a_time() {
    let shim = Shim::new();
    shim.run("c1").await;
    let gate = shim.runc().hold("pause");
    let svc = shim.svc.clone();
    let pause = tokio::spawn(async move { svc.set_frozen("c1", true).await });
    gate.entered(1).await;
    let e = shim.svc.set_frozen("c1", true).await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::RUNNING);
    gate.release();
    within(pause).await.unwrap().unwrap();
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::PAUSED);
    let e = shim.svc.set_frozen("c1", true).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot pause a process that is paused"),
        "{e}"
    );
    shim.svc.set_frozen("c1", false).await.unwrap();
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::RUNNING);
}

#[tokio::test]
async fn failed_pause_leaves_the_container_running() {
    let shim = Shim::new();
    shim.run("c1").await;
    shim.runc()
        .fault("pause", super::Fault::Fail("freezer: EBUSY"), 1);
    shim.svc.set_frozen("c1", true).await.unwrap_err();
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::RUNNING);
    shim.svc.set_frozen("c1", true).await.unwrap();
    assert_eq!(shim.svc.state("c1", "").unwrap().status(), Status::PAUSED);
}

/// Update hands runc every field containerd sent, also those this shim's
/// spec types do not know (newer runtime-spec fields, or keys of a newer
/// runc): a decode into typed structs and re-encode would drop them, and
/// the limit would silently not be applied.
#[tokio::test]
async fn update_passes_unknown_resource_fields_to_runc() {
    let shim = Shim::new();
    shim.run("c1").await;
    let sent = serde_json::json!({
        "cpu": {"shares": 512, "burst": 1000, "futureCpuKnob": 3},
        "memory": {"limit": 4194304, "checkBeforeUpdate": true},
        "unified": {"memory.high": "4194304"},
        "rdma": {"mlx5_0": {"hcaHandles": 3}},
        "futureController": {"x": [1, 2]},
    });
    let req = api::UpdateTaskRequest {
        id: "c1".into(),
        resources: Some(Any {
            value: serde_json::to_vec(&sent).unwrap(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    shim.svc.update(&req).await.unwrap();
    assert_eq!(shim.runc().updates(), vec![sent]);
}

/// containerd 1.7 and later, when they start again, delete without a word
/// to CRI every task (not a sandbox) whose Pids is empty, as a shim leaked
/// by a crash before its task was created: CRI then records exit 255,
/// "Unknown", for a container that exited while containerd was down. Pids
/// of an exited, not yet deleted container therefore lists its init.
#[tokio::test]
async fn pids_of_an_exited_container_list_its_init_until_delete() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    shim.reap(pid, 9).await;
    assert_eq!(shim.exits_and_deletes(), vec![Ev::Exit("c1".into(), 9)]);
    let r = within(shim.svc.pids("c1")).await.unwrap();
    let listed: Vec<u32> = r.processes.iter().map(|p| p.pid).collect();
    assert_eq!(listed, vec![pid as u32]);
    within(shim.svc.delete("c1", "")).await.unwrap();
    let e = within(shim.svc.pids("c1")).await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
}
