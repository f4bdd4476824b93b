//! A short variant of the soak benchmark (`scripts/soak.sh`): a few pods of
//! short tasks at once, a kubelet-like loop, a delayed unmount on one shim;
//! then no leaks, no zombies, every exit code right and no CRI stall.

use std::time::Duration;

use brisk_integration::soak::{self, SoakParams};

#[test]
fn short_soak_brisk() {
    if !brisk_integration::integration_enabled() {
        return;
    }
    brisk_integration::require_brisk();
    let p = SoakParams {
        pods: 3,
        tasks_per_pod: 6,
        delayed_shims: 1,
        delay: Duration::from_secs(2),
        ..Default::default()
    };
    let r = soak::run(&p).expect("soak");
    eprint!("{}", r.render());
    assert_eq!(r.tasks_done, 18, "{:?}", r.task_errors);
    assert!(r.update_failures.is_empty(), "{:?}", r.update_failures);
    assert!(r.leaks.is_empty(), "{:?}", r.leaks);
    assert!(r.zombies.is_empty(), "{:?}", r.zombies);
    assert!(
        r.list_max < Duration::from_millis(500),
        "ListContainers max {:?}",
        r.list_max
    );
}
