//! `containerd-shim-brisk-v2`: the binary containerd runs for runtime type
//! `io.containerd.brisk.v2`.

use brisk_shim::{bootstrap::BriskShim, doctor, logging, volatile};
use containerd_shim::Config;

const RUNTIME_ID: &str = "io.containerd.brisk.v2";

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
        println!("runtime type: {RUNTIME_ID}, Task API v2");
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
    let serving = !args.iter().any(|a| a == "start" || a == "delete");
    if serving {
        logging::init(args.iter().any(|a| a == "-debug"));
    }
    let config = Config {
        // Logging is ours (tracing, to the log FIFO), and so is the reaper.
        no_setup_logger: true,
        no_reaper: true,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .expect("build tokio runtime");
    rt.block_on(containerd_shim::asynchronous::run::<BriskShim>(
        RUNTIME_ID,
        Some(config),
    ));
}
