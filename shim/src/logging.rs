//! Logging to containerd: the shim writes to the `log` FIFO in its bundle,
//! which containerd reads and merges into its own log.

use std::{fs::OpenOptions, sync::Mutex};

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the subscriber. `debug` is the `-debug` flag containerd passes.
pub fn init(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("BRISK_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    // containerd opens the reading end before it starts the shim.
    match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => {
            let _ = builder.with_writer(Mutex::new(fifo)).try_init();
        }
        Err(_) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}
