//! `brisk-ctl doctor`: checks what a node needs before brisk
//! runs there, and prints one verdict per check.

use std::{
    fmt,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::UnixStream,
    },
    path::Path,
    process::Command,
};

use brisk_shim::{shim_socket, volatile};

use crate::runc_cves::{self, RuncVersion};

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

fn check_runc() -> Vec<Check> {
    match run("runc", &["--version"]) {
        Ok(v) => vec![
            Check {
                name: "runc",
                verdict: Verdict::Ok,
                detail: first_line(&v),
            },
            runc_security(&v),
        ],
        Err(e) => vec![Check {
            name: "runc",
            verdict: Verdict::Fail,
            detail: format!("{e} (set runc_binary in brisk.toml)"),
        }],
    }
}

/// Known container escapes the runc version predates the upstream fixes
/// of. A warning: distributions backport fixes without changing the
/// upstream version.
fn runc_security(version_output: &str) -> Check {
    let name = "runc security fixes";
    let Some(v) = RuncVersion::parse(version_output) else {
        return Check {
            name,
            verdict: Verdict::Warn,
            detail: format!(
                "cannot read a version from {:?}",
                first_line(version_output)
            ),
        };
    };
    let missing = runc_cves::missing_fixes(&v);
    if missing.is_empty() {
        return Check {
            name,
            verdict: Verdict::Ok,
            detail:
                "at or above the upstream fixes of CVE-2024-21626 and CVE-2025-31133/52565/52881"
                    .into(),
        };
    }
    Check {
        name,
        verdict: Verdict::Warn,
        detail: format!(
            "upstream {}.{}.{} predates the fixes of {} (fixed in 1.1.12; 1.2.8, 1.3.3, 1.4.0-rc.3); distributions backport fixes, so check your vendor's advisory",
            v.major,
            v.minor,
            v.patch,
            missing.join("; ")
        ),
    }
}

/// The directory of the shim sockets: whoever can write there can swap a
/// pod's socket for their own, and whoever can enter it can try to connect.
fn check_socket_dir(dir: &Path) -> Check {
    let name = "shim socket directory";
    let check = |verdict, detail: String| Check {
        name,
        verdict,
        detail: format!("{}: {detail}", dir.display()),
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return check(
                Verdict::Ok,
                "not there yet (created 0700 by the first shim)".into(),
            )
        }
        Err(e) => return check(Verdict::Fail, format!("stat: {e}")),
    };
    if meta.file_type().is_symlink() {
        return check(Verdict::Fail, "is a symlink; shims refuse it".into());
    }
    if !meta.is_dir() {
        return check(Verdict::Fail, "is not a directory".into());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != 0 {
        return check(
            Verdict::Fail,
            format!("owned by uid {}, not root", meta.uid()),
        );
    }
    if mode & 0o022 != 0 {
        return check(
            Verdict::Fail,
            format!("mode {mode:04o} lets others write; shims refuse it"),
        );
    }
    if mode & 0o077 != 0 {
        return check(
            Verdict::Warn,
            format!("mode {mode:04o} opens it to group or others; 0700 is expected"),
        );
    }
    check(Verdict::Ok, format!("mode {mode:04o}, owned by root"))
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
    checks.extend(check_runc());
    checks.push(check_socket_dir(Path::new(shim_socket::DEFAULT_SOCKET_DIR)));
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn runc_security_warns_by_version_and_mentions_backports() {
        let c = runc_security("runc version 1.1.5+ds1\ncommit: x\n");
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("1.1.5"), "{}", c.detail);
        assert!(c.detail.contains("CVE-2024-21626"), "{}", c.detail);
        assert!(c.detail.contains("CVE-2025-31133"), "{}", c.detail);
        assert!(c.detail.contains("backport"), "{}", c.detail);
        assert_eq!(runc_security("runc version 1.3.3\n").verdict, Verdict::Ok);
        assert_eq!(runc_security("garbage").verdict, Verdict::Warn);
    }

    #[test]
    fn socket_dir_mode_and_owner_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        assert_eq!(check_socket_dir(&dir).verdict, Verdict::Ok);
        std::fs::create_dir(&dir).unwrap();
        let set = |m| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m)).unwrap();
        // Owner and mode checks mean something only as root (the shim's uid).
        let root = std::fs::metadata(tmp.path()).unwrap().uid() == 0;
        if root {
            set(0o700);
            assert_eq!(check_socket_dir(&dir).verdict, Verdict::Ok);
            set(0o711);
            assert_eq!(check_socket_dir(&dir).verdict, Verdict::Warn);
            set(0o777);
            let c = check_socket_dir(&dir);
            assert_eq!(c.verdict, Verdict::Fail);
            assert!(c.detail.contains("0777"), "{}", c.detail);
            set(0o700);
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let c = check_socket_dir(&dir);
            assert_eq!(c.verdict, Verdict::Fail);
            assert!(c.detail.contains("uid 65534"), "{}", c.detail);
        }
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_eq!(check_socket_dir(&link).verdict, Verdict::Fail);
    }
}
