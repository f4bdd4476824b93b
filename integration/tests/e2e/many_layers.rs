//! Images of many layers: with containerd's snapshot paths each lowerdir is
//! some 70 bytes, so an image of 80 layers or more gives an overlay lowerdir
//! option longer than the kernel's one page of mount data. The stock shim
//! mounts it with lowerdirs relative to their common parent; so must brisk.

use std::{process::Command, time::Duration};

use brisk_integration::containerd::{ensure_images, workspace_root};

use crate::common;

const IMAGE: &str = "localhost/brisk/layered:latest";
/// Tiny layers above the busybox layer.
const LAYERS: usize = 90;

fn many_layers(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let ctr = cd.ctr().expect("ctr namespace with images");
    let (busybox, _) = ensure_images().expect("image archives");
    let tar = cd.dir.join("layered.tar");
    let out = brisk_integration::sys::run_with_timeout(
        Command::new("bash")
            .arg(workspace_root().join("scripts/build-layered-image.sh"))
            .arg(&busybox)
            .arg(LAYERS.to_string())
            .arg(IMAGE)
            .arg(&tar),
        Duration::from_secs(120),
    )
    .expect("run build-layered-image.sh");
    assert!(
        out.status.success(),
        "build-layered-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctr.import(&tar).expect("import the layered image");

    let id = "many-layers";
    let cgroup = cd.ctr_cgroup(id);
    let top = format!("/layers/{}", LAYERS - 1);
    let out = ctr
        .run_rm(
            common::runtime_type(handler),
            Some(&cgroup),
            IMAGE,
            id,
            // busybox and /etc/passwd come from the bottom layer.
            &["cat", "/etc/passwd", "/layers/0", &top],
        )
        .expect("ctr run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctr run of a {}-layer image failed ({}): {stdout}{}",
        LAYERS + 1,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("root:x:0:0"), "bottom layer: {stdout}");
    assert!(stdout.contains("layer 0\n"), "first small layer: {stdout}");
    assert!(
        stdout.contains(&format!("layer {}\n", LAYERS - 1)),
        "top layer: {stdout}"
    );
    cd.assert_no_leaks();
    cd.finish();
}

crate::handler_tests!(many_layers);
