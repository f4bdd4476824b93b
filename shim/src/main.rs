//! `containerd-shim-brisk-v2`: the binary containerd runs for runtime type
//! `io.containerd.brisk.v2`.

use brisk_shim::{bootstrap, doctor, volatile};

fn main() {
    // containerd under systemd (Type=notify) hands its NOTIFY_SOCKET to every
    // shim. Nothing the shim starts may use it: runc would bind a notify
    // socket of its own and fail. Removed before any thread exists.
    std::env::remove_var("NOTIFY_SOCKET");
    let args: Vec<String> = std::env::args().collect();
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!("containerd-shim-brisk-v2 {}", env!("CARGO_PKG_VERSION"));
        println!("commit: {}", env!("BRISK_GIT_COMMIT"));
        println!("runtime type: {}, Task API v2", bootstrap::RUNTIME_ID);
        let volatile = if volatile::supported() {
            "supported"
        } else {
            "not supported (or not root)"
        };
        println!("overlayfs volatile: {volatile}");
        return;
    }
    if args.get(1).map(String::as_str) == Some("doctor") {
        std::process::exit(doctor::run_all());
    }
    std::process::exit(bootstrap::run(&args));
}
