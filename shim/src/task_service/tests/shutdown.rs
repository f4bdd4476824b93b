//! Shutdown: ignored while containers remain, never cuts a Create short,
//! and once the shim decided to exit no Create is taken.

use containerd_shim_protos::ttrpc::Code;

use super::{code, settle, within, Shim};

#[tokio::test]
async fn shutdown_with_containers_left_is_ignored() {
    let shim = Shim::new();
    shim.run("c1").await;
    shim.svc.shutdown();
    settle().await;
    assert!(!shim.exited().await);
}

#[tokio::test]
async fn shutdown_racing_a_create() {
    let shim = Shim::new();
    let gate = shim.runc().hold("create");
    let svc = shim.svc.clone();
    let req = shim.request("c1");
    let create = tokio::spawn(async move { svc.create(&req).await });
    gate.entered(1).await;
    // containerd's Shutdown after the pod's last task, while a new task of
    // the pod is being created: the shim must stay for it.
    shim.svc.shutdown();
    settle().await;
    assert!(
        !shim.exited().await,
        "the shim exited under a running Create"
    );
    gate.release();
    within(create).await.unwrap().unwrap();
    settle().await;
    assert!(
        !shim.exited().await,
        "the shim exited with a container in it"
    );
    assert!(shim.svc.container("c1").is_ok());

    // Once that container is gone, Shutdown ends the shim, and a Create
    // coming after that is refused rather than cut off.
    within(shim.svc.delete("c1", "")).await.unwrap();
    shim.svc.shutdown();
    within(shim.exit.wait()).await;
    let e = shim.svc.create(&shim.request("c2")).await.unwrap_err();
    assert_eq!(code(&e), Code::UNAVAILABLE, "{e}");
}

#[tokio::test]
async fn shutdown_waits_for_detached_cleanup() {
    let shim = Shim::new();
    let pid = shim.run("c1").await;
    let gate = shim.runc().hold("delete");
    shim.reap(pid, 0).await;
    gate.entered(1).await;
    shim.svc.shutdown();
    settle().await;
    // The container is still registered: nothing happens.
    assert!(!shim.exited().await);
    gate.release();
    within(shim.svc.delete("c1", "")).await.unwrap();
    shim.svc.shutdown();
    within(shim.exit.wait()).await;
}
