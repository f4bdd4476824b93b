//! Records the git commit the binary was built from, for `--version`, and
//! generates the protobuf messages of containerd's bootstrap protocol that no
//! crate ships (`proto/bootstrap.proto`).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BRISK_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");

    // The lite runtime: plain messages without descriptors or reflection,
    // which the shim never uses and would pay for in every pod's RSS.
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/bootstrap.proto")
        .customize(protobuf_codegen::Customize::default().lite_runtime(true))
        .cargo_out_dir("protos")
        .run_from_script();
}
