//! The shim binary's lives, as containerd runs it: `start` (find or launch
//! the pod's shim and print its address), `delete` (clean up after a shim
//! that died), `-info` (what the runtime supports), and serving the Task API.
//!
//! The `containerd-shim` crate's own entry point is not used: it reads the
//! stdin of `start` as runtime options only, which containerd 2.3's
//! bootstrap message is not, and it leaves the socket's creation to the
//! shim it launches.

use std::path::PathBuf;

use containerd_shim::Flags;

use crate::{dead_shim, info, logging, serve, start};

/// The runtime type containerd knows brisk by.
pub const RUNTIME_ID: &str = "io.containerd.brisk.v2";

/// Runs the action `args` (the command line, program name first) asks for;
/// returns the process's exit code. Errors go to stderr, where containerd
/// takes them into its own error for `start` and `delete`.
pub fn run(args: &[String]) -> i32 {
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => return fail(format!("command line: {e}")),
    };
    let outcome = if flags.info {
        info::run().map_err(|e| e.to_string())
    } else {
        match flags.action.as_str() {
            "start" => start::run(&flags).map_err(|e| e.to_string()),
            "delete" => {
                logging::init_cleanup(flags.debug);
                on_runtime(delete(flags))
            }
            "" => {
                logging::init(flags.debug);
                on_runtime(async move { serve::run(flags).await.map_err(|e| e.to_string()) })
            }
            other => Err(format!(
                "unknown action {other:?} (containerd runs `start`, `delete`, `-info`, or no action to serve)"
            )),
        }
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn delete(flags: Flags) -> Result<(), String> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| format!("working directory: {e}"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    dead_shim::run(&flags.namespace, &flags.id, &bundle)
        .await
        .map_err(|e| e.to_string())
}

/// One thread: a pod's shim has nothing to do in parallel that would pay
/// for more. Blocking work (unmounts, file I/O) goes to the blocking pool.
fn on_runtime(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .map_err(|e| format!("build tokio runtime: {e}"))?
        .block_on(fut)
}

fn fail(message: String) -> i32 {
    eprintln!("{RUNTIME_ID}: {message}");
    1
}
