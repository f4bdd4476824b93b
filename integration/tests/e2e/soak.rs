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
        tasks_per_pod: 4,
        delayed_shims: 1,
        delay: Duration::from_secs(4),
        ..Default::default()
    };
    let r = soak::run(&p).expect("soak");
    eprint!("{}", r.render());
    assert_eq!(r.tasks_done, 12, "{:?}", r.task_errors);
    // Each task on the delayed shim: runc's two at its start, the rootfs's.
    assert!(r.delayed_umounts >= 4 * 3, "{}", r.render());
    assert!(r.update_failures.is_empty(), "{:?}", r.update_failures);
    assert!(r.leaks.is_empty(), "{:?}", r.leaks);
    assert!(r.zombies.is_empty(), "{:?}", r.zombies);
    assert!(
        r.list_p99 < Duration::from_millis(50),
        "ListContainers p99 {:?}",
        r.list_p99
    );
    assert!(
        r.list_max < r.stall_bound,
        "longest ListContainers {}",
        r.list_max_context
    );
}
