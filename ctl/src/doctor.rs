//! `brisk-ctl doctor`: checks what a node needs before brisk
//! runs there, and prints one verdict per check.

use std::{fmt, os::unix::net::UnixStream, path::Path, process::Command};

use brisk_shim::volatile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "OK  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        })
    }
}

pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run {cmd}: {e}")),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn check_volatile() -> Check {
    let ok = volatile::supported();
    Check {
        name: "overlayfs volatile",
        verdict: if ok { Verdict::Ok } else { Verdict::Warn },
        detail: if ok {
            "supported: exiting containers' unmounts have nothing to sync".into()
        } else {
            "not supported (or not root): unmounts may sync under I/O pressure; they still run detached".into()
        },
    }
}

fn check_containerd() -> Vec<Check> {
    let version = run("containerd", &["--version"]);
    let mut out = vec![match &version {
        Ok(v) => Check {
            name: "containerd",
            verdict: Verdict::Ok,
            detail: first_line(v),
        },
        Err(e) => Check {
            name: "containerd",
            verdict: Verdict::Fail,
            detail: e.clone(),
        },
    }];
    if version.is_ok() {
        out.push(match run("containerd", &["config", "dump"]) {
            Ok(dump) if dump.contains("io.containerd.brisk.v2") => Check {
                name: "containerd config",
                verdict: Verdict::Ok,
                detail: "a runtime uses io.containerd.brisk.v2".into(),
            },
            Ok(_) => Check {
                name: "containerd config",
                verdict: Verdict::Warn,
                detail: "no runtime uses io.containerd.brisk.v2 (see configs/)".into(),
            },
            Err(e) => Check {
                name: "containerd config",
                verdict: Verdict::Fail,
                detail: format!("config dump failed: {e}"),
            },
        });
    }
    out
}

fn check_runc() -> Check {
    match run("runc", &["--version"]) {
        Ok(v) => Check {
            name: "runc",
            verdict: Verdict::Ok,
            detail: first_line(&v),
        },
        Err(e) => Check {
            name: "runc",
            verdict: Verdict::Fail,
            detail: format!("{e} (set runc_binary in brisk.toml)"),
        },
    }
}

fn check_cgroups() -> Check {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    Check {
        name: "cgroups",
        verdict: Verdict::Ok,
        detail: if v2 {
            "v2 (unified)".into()
        } else {
            "v1".into()
        },
    }
}

/// Shim sockets nobody serves, and overlay mounts of bundles whose shim is gone.
fn check_leftovers() -> Vec<Check> {
    let mut dead = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/run/containerd/s") {
        for e in entries.flatten() {
            if let Err(err) = UnixStream::connect(e.path()) {
                if err.kind() == std::io::ErrorKind::ConnectionRefused {
                    dead.push(e.path().display().to_string());
                }
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let orphans: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.contains("io.containerd.runtime.v2.task/") && t.ends_with("/rootfs"))
        .filter(|t| {
            let bundle = Path::new(t).parent().unwrap_or(Path::new("/"));
            let addr = std::fs::read_to_string(bundle.join("address")).unwrap_or_default();
            let sock = addr.trim().trim_start_matches("unix://");
            sock.is_empty() || UnixStream::connect(sock).is_err()
        })
        .map(String::from)
        .collect();
    let verdict = |v: &[String]| {
        if v.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Warn
        }
    };
    vec![
        Check {
            name: "leftover shim sockets",
            verdict: verdict(&dead),
            detail: if dead.is_empty() {
                "none".into()
            } else {
                dead.join(" ")
            },
        },
        Check {
            name: "leftover rootfs mounts",
            verdict: verdict(&orphans),
            detail: if orphans.is_empty() {
                "none".into()
            } else {
                orphans.join(" ")
            },
        },
    ]
}

/// Runs every check, prints them, and returns the process exit code
/// (1 when any check failed).
pub fn run_all() -> i32 {
    let mut checks = vec![check_volatile()];
    checks.extend(check_containerd());
    checks.push(check_runc());
    checks.push(check_cgroups());
    checks.extend(check_leftovers());
    for c in &checks {
        println!("[{}] {:<24} {}", c.verdict, c.name, c.detail);
    }
    let failed = checks.iter().any(|c| c.verdict == Verdict::Fail);
    println!(
        "verdict: {}",
        if failed {
            "NOT READY"
        } else {
            "ready for brisk"
        }
    );
    i32::from(failed)
}
