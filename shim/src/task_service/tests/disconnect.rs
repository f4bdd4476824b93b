//! containerd goes away (restart, crash) while a call is in flight. The
//! ttrpc server then drops the call's future at the disconnect, wherever
//! it is; a lifecycle step cut off midway would leave its state machine
//! half moved (a Start forever "starting", whose exit is then withheld for
//! good) and its runc child running on after the rollback. Each call runs
//! to its end whether or not its caller still waits.

use containerd_shim_protos::{api, shim_async::Task};

use super::{ctx, settle, within, Ev, Shim};

#[tokio::test]
async fn a_start_cut_off_by_a_disconnect_still_ends_and_its_exit_is_told() {
    let shim = Shim::new();
    let pid = shim.svc.create(&shim.request("c1")).await.unwrap();
    let gate = shim.runc().hold("start");
    let c = ctx();
    let start = Task::start(
        &shim.svc,
        &c,
        api::StartRequest {
            id: "c1".into(),
            ..Default::default()
        },
    );
    // The Start reaches `runc start`; then containerd disconnects, and the
    // server drops the call.
    tokio::select! {
        r = start => panic!("start answered while runc start was held: {r:?}"),
        () = gate.entered(1) => {}
    }
    gate.release();
    settle().await;
    shim.reap(pid, 3).await;
    within(async {
        while !shim.exits_and_deletes().contains(&Ev::Exit("c1".into(), 3)) {
            settle().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_create_cut_off_by_a_disconnect_still_ends() {
    let shim = Shim::new();
    let gate = shim.runc().hold("create");
    let req = shim.request("c1");
    let c = ctx();
    let create = Task::create(&shim.svc, &c, req);
    tokio::select! {
        r = create => panic!("create answered while runc create was held: {r:?}"),
        () = gate.entered(1) => {}
    }
    gate.release();
    // The create went on to its end: the container is there, as runc
    // made it, for containerd to find when it comes back.
    within(async {
        loop {
            let st = Task::state(
                &shim.svc,
                &ctx(),
                api::StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await;
            if st.is_ok() {
                break;
            }
            settle().await;
        }
    })
    .await;
}
