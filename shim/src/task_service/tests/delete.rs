//! Delete: of a created container, of a running one (refused), of an
//! exited one, and while a call on it is still owed an answer.

use containerd_shim_protos::ttrpc::Code;

use super::{code, settle, within, Ev, Shim};

#[tokio::test]
async fn delete_of_a_created_container_forces_runc_delete() {
    let shim = Shim::new();
    let (req, _) = shim.request_with_rootfs("c1");
    shim.svc.create(&req).await.unwrap();
    let d = within(shim.svc.delete("c1", "")).await.unwrap();
    assert_eq!(d.exit_status, 0);
    assert_eq!(shim.runc().calls("delete --force", "c1"), 1);
    assert!(!shim.runc().has_state("c1"));
    within(shim.detached.wait_idle(std::time::Duration::from_secs(5))).await;
    assert!(shim.platform.mounted().is_empty());
    assert_eq!(shim.exits_and_deletes(), vec![Ev::Delete("c1".into(), 0)]);
    let e = shim.svc.delete("c1", "").await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
}

#[tokio::test]
async fn delete_of_a_running_container_is_refused() {
    let shim = Shim::new();
    shim.run("c1").await;
    let e = shim.svc.delete("c1", "").await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    assert!(
        e.to_string()
            .contains("cannot delete a process that is running"),
        "{e}"
    );
    assert!(shim.runc().has_state("c1"));
}

#[tokio::test]
async fn delete_waits_for_a_call_in_flight() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let gate = shim.runc().hold("exec");
    let svc = shim.svc.clone();
    let add = containerd_shim_protos::api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        spec: Some(
            containerd_shim_protos::protobuf::well_known_types::any::Any {
                value: br#"{"args":["true"],"cwd":"/"}"#.to_vec(),
                ..Default::default()
            },
        )
        .into(),
        ..Default::default()
    };
    shim.svc.add_exec(&add).unwrap();
    let start = tokio::spawn(async move { svc.start_exec("c1", "e1").await });
    gate.entered(1).await;
    shim.reap(pid, 0).await;
    assert_eq!(shim.exits_and_deletes(), vec![Ev::Exit("c1".into(), 0)]);
    let svc = shim.svc.clone();
    let delete = tokio::spawn(async move { svc.delete("c1", "").await });
    settle().await;
    assert!(
        !delete.is_finished(),
        "Delete answered before the exec start did"
    );
    gate.release();
    let _ = within(start).await.unwrap();
    within(delete).await.unwrap().unwrap();
}

#[tokio::test]
async fn exec_delete_needs_a_stopped_or_created_exec() {
    let shim = Shim::new();
    shim.run("c1").await;
    let e1 = shim.exec("c1", "e1").await;
    let e = shim.svc.delete("c1", "e1").await.unwrap_err();
    assert_eq!(code(&e), Code::FAILED_PRECONDITION, "{e}");
    shim.reap(e1, 1).await;
    assert_eq!(shim.svc.delete("c1", "e1").await.unwrap().exit_status, 1);
    let e = shim.svc.delete("c1", "e1").await.unwrap_err();
    assert_eq!(code(&e), Code::NOT_FOUND, "{e}");
}
