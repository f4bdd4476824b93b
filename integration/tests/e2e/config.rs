//! brisk reads its settings from the file CRI names in `ConfigPath`.

use brisk_integration::containerd::RUNC_STATE_ROOTS;
use brisk_integration::{ContainerSpec, Options, BRISK_HANDLER};

use crate::common;

#[test]
fn brisk_config_path() {
    let opts = Options {
        brisk_config_toml: Some(
            "runc_binary = \"/usr/sbin/runc\"\nrunc_root = \"{dir}/brisk-runc-root\"\n".into(),
        ),
        ..Default::default()
    };
    let Some(cd) = common::start_with(BRISK_HANDLER, opts) else {
        return;
    };
    let cri = cd.cri();
    let pod = cri.run_pod_sandbox(BRISK_HANDLER, "config").expect("pod");
    let id = cri
        .run_container(&pod, &ContainerSpec::new("c", &["sleep", "1000"]))
        .expect("container");
    let root = cd.dir.join("brisk-runc-root").join("k8s.io");
    assert!(
        root.join(&id).join("state.json").is_file(),
        "runc state of {id} under the configured root {}",
        root.display()
    );
    for r in RUNC_STATE_ROOTS {
        assert!(
            !std::path::Path::new(r).join("k8s.io").join(&id).exists(),
            "no runc state under {r}"
        );
    }
    cri.stop_pod(&pod.id).expect("stop pod");
    cri.remove_pod(&pod.id).expect("remove pod");
    cd.assert_no_leaks();
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "runc state left under the configured root: {left:?}"
    );
    cd.finish();
}
