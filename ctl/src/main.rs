//! `brisk-ctl`: install brisk on a node, swap it in on a canary node, roll
//! back, show which pods run under which shim, and check the node.

mod canary;
mod doctor;
mod exporter;
mod exporter_unit;
mod runc_cves;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use canary::{sandbox_image_in, CtlError, Node, BRISK_RUNTIME_TYPE, SHIM_NAME};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "brisk-ctl",
    version,
    about = "Install, enable and roll back the brisk containerd shim"
)]
struct Cli {
    /// containerd's config file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// brisk's own settings, written by `enable` when missing.
    #[arg(long, default_value = "/etc/containerd/brisk.toml")]
    brisk_toml: PathBuf,
    /// The one directory where the shim binary is installed, looked for and
    /// removed; must be on containerd's PATH. Default: `install` writes to
    /// /usr/local/bin (a hand install); `status` and `uninstall` look in
    /// /usr/local/bin and /usr/bin (the Debian package's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// How to restart containerd.
    #[arg(long, default_value = "systemctl restart containerd")]
    restart_cmd: String,
    #[arg(long, default_value = "containerd")]
    containerd: PathBuf,
    #[arg(long, default_value = "ctr")]
    ctr: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the shim binary (default: the one next to brisk-ctl) into
    /// --bin-dir (default /usr/local/bin); refuses to overwrite the Debian
    /// package's.
    Install {
        #[arg(long)]
        from: Option<PathBuf>,
        /// Also install the exporter: brisk-ctl beside the shim and its
        /// systemd unit in --unit-dir, enabled and started where systemd
        /// runs (the Debian package ships the unit disabled instead).
        #[arg(long)]
        exporter: bool,
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Back up containerd's config, register brisk, validate, restart
    /// containerd and probe; rolls back by itself if the probe fails.
    Enable {
        /// Make brisk the runtime of the default `runc` handler instead of
        /// adding a `brisk` handler.
        #[arg(long)]
        canary: bool,
        /// Image of the probe container (default: CRI's sandbox image).
        #[arg(long)]
        probe_image: Option<String>,
        /// ctr's `--cgroup` for the probe (default: ctr's, `/<namespace>/<id>`,
        /// removed after it). On a node whose runc uses systemd cgroups, pass
        /// one like `system.slice:brisk:probe`.
        #[arg(long)]
        probe_cgroup: Option<String>,
        #[arg(long, default_value = "k8s.io")]
        namespace: String,
    },
    /// Restore the config saved by `enable` and restart containerd.
    Rollback,
    /// The shim binaries installed (by hand or by the package), and which
    /// containers run under which runtime.
    Status,
    /// Remove a hand-installed shim binary, and the exporter unit
    /// `install --exporter` wrote; refuses while any task uses brisk, and
    /// leaves the Debian package's to apt.
    Uninstall {
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Check what the node needs before brisk runs there: volatile support,
    /// containerd and its config, runc, cgroups, leftover sockets and
    /// mounts. Exits 1 when a check fails.
    Doctor,
    /// Print the shell completion script for SHELL (the .deb installs
    /// bash's, zsh's and fish's).
    Completions { shell: clap_complete::Shell },
    /// Print brisk-ctl's man page (roff) to stdout.
    Man,
    /// Serve the node's brisk figures (every brisk shim's, summed, and a
    /// CRI ListContainers probe) in Prometheus text format on /metrics.
    /// Uses the global --address as containerd's socket.
    Exporter {
        #[arg(long, default_value = "127.0.0.1:9807")]
        listen: std::net::SocketAddr,
        /// containerd's state dir (containerd's --state), where the task
        /// directories name each shim's socket.
        #[arg(long, default_value = "/run/containerd")]
        state: PathBuf,
        /// Seconds between CRI ListContainers probes; 0 turns the probe off.
        #[arg(long, default_value_t = 10.0)]
        list_interval: f64,
        /// Seconds one shim gets to hand over its figures.
        #[arg(long, default_value_t = 1.0)]
        shim_timeout: f64,
    },
}

fn install_exporter(
    node: &Node,
    me: &std::path::Path,
    unit_dir: &std::path::Path,
) -> Result<(), CtlError> {
    if std::path::Path::new(exporter_unit::PACKAGE_UNIT).exists() {
        println!(
            "exporter: the Debian package's unit {} is there: systemctl enable --now {}",
            exporter_unit::PACKAGE_UNIT,
            exporter_unit::UNIT_NAME
        );
        return Ok(());
    }
    let ctl = node.install_ctl(me)?;
    let (unit, enabled) = exporter_unit::install(unit_dir, &ctl, &node.address)?;
    println!("installed {} and {}", ctl.display(), unit.display());
    if enabled {
        println!("exporter: enabled and started; curl 127.0.0.1:9807/metrics");
    } else {
        println!(
            "exporter: systemd does not run here; start it with: {} --address {} exporter",
            ctl.display(),
            node.address.display()
        );
    }
    Ok(())
}

/// CRI's sandbox image, from `containerd config dump` of the current config.
fn sandbox_image(node: &Node) -> Option<String> {
    let out = std::process::Command::new(&node.containerd)
        .arg("--config")
        .arg(&node.config)
        .args(["config", "dump"])
        .output()
        .ok()?;
    sandbox_image_in(&String::from_utf8_lossy(&out.stdout))
}

fn run(cli: Cli) -> Result<(), CtlError> {
    let node = Node {
        config: cli.config,
        brisk_toml: cli.brisk_toml,
        bin_dir: cli.bin_dir,
        address: cli.address,
        restart_cmd: cli.restart_cmd,
        containerd: cli.containerd,
        ctr: cli.ctr,
    };
    match cli.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "brisk-ctl",
                &mut std::io::stdout(),
            );
        }
        Cmd::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| CtlError::Command(format!("write the man page: {e}")))?;
        }
        Cmd::Exporter {
            listen,
            state,
            list_interval,
            shim_timeout,
        } => {
            let secs = |name: &str, v: f64| {
                Duration::try_from_secs_f64(v).map_err(|_| {
                    CtlError::Command(format!("--{name} {v}: not a number of seconds"))
                })
            };
            return exporter::run(exporter::Settings {
                listen,
                address: node.address,
                state,
                list_interval: secs("list-interval", list_interval)?,
                shim_timeout: secs("shim-timeout", shim_timeout)?,
            });
        }
        Cmd::Doctor => {
            if doctor::run_all() != 0 {
                return Err(CtlError::Command("the node is not ready for brisk".into()));
            }
        }
        Cmd::Install {
            from,
            exporter,
            unit_dir,
        } => {
            let me = std::env::current_exe().map_err(|e| CtlError::Command(e.to_string()))?;
            let from = from.unwrap_or_else(|| me.with_file_name(SHIM_NAME));
            let dest = node.install(&from)?;
            println!("installed {}", dest.display());
            for other in node.installed_shims().iter().filter(|s| s.path != dest) {
                println!(
                    "note: {} ({}) is also there; containerd runs the one first on its PATH",
                    other.path.display(),
                    other.origin()
                );
            }
            if exporter {
                install_exporter(&node, &me, &unit_dir)?;
            }
        }
        Cmd::Enable {
            canary,
            probe_image,
            probe_cgroup,
            namespace,
        } => {
            // Known before anything changes: finding no image after the
            // restart would leave containerd on brisk unprobed.
            let image = probe_image
                .or_else(|| sandbox_image(&node))
                .ok_or_else(|| CtlError::Command("no probe image: pass --probe-image".into()))?;
            let edit = node.write_enabled_config(canary)?;
            println!(
                "config: handler {:?} now uses {BRISK_RUNTIME_TYPE} (backup {}); carried into {}: {:?}",
                edit.handler,
                node.backup_path().display(),
                node.brisk_toml.display(),
                edit.carried
            );
            let took = node.restart()?;
            println!("containerd restarted in {took:?}");
            match node.probe(&namespace, &image, probe_cgroup.as_deref()) {
                Ok(took) => {
                    println!("probe: a container of {image} ran under brisk ({took:?})\nenabled")
                }
                Err(e) => {
                    eprintln!("probe failed: {e}; rolling back");
                    node.restore_config()?;
                    node.restart()?;
                    return Err(CtlError::Command(
                        "enable rolled back after a failed probe".into(),
                    ));
                }
            }
        }
        Cmd::Rollback => {
            node.restore_config()?;
            let took = node.restart()?;
            println!("config restored, containerd restarted in {took:?}; running brisk tasks keep their shim until they end");
        }
        Cmd::Status => {
            let installed = node.installed_shims();
            if installed.is_empty() {
                println!("shim: not installed in {:?}", node.shim_candidates());
            }
            for s in installed {
                println!("shim: {} ({})", s.path.display(), s.origin());
            }
            println!(
                "{:<12} {:<66} {:<24} TASK",
                "NAMESPACE", "CONTAINER", "RUNTIME"
            );
            for r in node.status()? {
                println!(
                    "{:<12} {:<66} {:<24} {}",
                    r.namespace,
                    r.id,
                    r.runtime,
                    r.task.as_deref().unwrap_or("-")
                );
            }
        }
        Cmd::Uninstall { unit_dir } => {
            let removed = node.uninstall()?;
            if removed.is_empty() {
                println!("no shim installed in {:?}", node.shim_candidates());
            }
            for path in removed {
                println!("removed {}", path.display());
            }
            if let Some(unit) = exporter_unit::uninstall(&unit_dir)? {
                println!(
                    "removed {} (brisk-ctl itself stays where it is)",
                    unit.display()
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brisk-ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_page_name_every_subcommand() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "brisk-ctl",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH brisk-ctl"),
            "{man}"
        );
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            assert!(bash.contains(name), "bash completion lacks {name}");
            assert!(man.contains(name), "man page lacks {name}");
        }
        Cli::command().debug_assert();
    }
}
