//! The exporter's systemd unit. The Debian package ships
//! `configs/systemd/brisk-exporter.service` in /usr/lib/systemd/system,
//! disabled; `brisk-ctl install --exporter` writes the same unit with this
//! install's paths to /etc/systemd/system and enables it where systemd
//! runs. One text for both, so a hand install runs what the package runs.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::canary::CtlError;

pub const UNIT_NAME: &str = "brisk-exporter.service";
/// Where the Debian package puts it.
pub const PACKAGE_UNIT: &str = "/usr/lib/systemd/system/brisk-exporter.service";
const TEMPLATE: &str = include_str!("../../configs/systemd/brisk-exporter.service");
const TEMPLATE_CTL: &str = "/usr/bin/brisk-ctl";
const TEMPLATE_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The first line of a unit this tool wrote: `uninstall` removes only those.
const MARK: &str = "# Written by `brisk-ctl install --exporter`; `brisk-ctl uninstall` removes it.";

/// A path systemd's ExecStart takes as one word, unquoted: no whitespace,
/// quotes, specifiers or escapes.
fn plain(path: &Path) -> Result<&str, CtlError> {
    let s = path.to_str().filter(|s| {
        s.starts_with('/')
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(c))
    });
    s.ok_or_else(|| {
        CtlError::Refused(format!(
            "{}: not a plain absolute path systemd can run unquoted",
            path.display()
        ))
    })
}

/// The unit for brisk-ctl at `ctl` and containerd's socket at `address`.
pub fn render(ctl: &Path, address: &Path) -> Result<String, CtlError> {
    let (ctl, address) = (plain(ctl)?, plain(address)?);
    Ok(format!(
        "{MARK}\n{}",
        TEMPLATE
            .replace(TEMPLATE_CTL, ctl)
            .replace(TEMPLATE_ADDRESS, address)
    ))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> CtlError {
    move |e| CtlError::Command(format!("{what}: {e}"))
}

/// Whether systemd is the init here (as sd_booted(3) tells).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<(), CtlError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(io("run systemctl".into()))?;
    if !out.status.success() {
        return Err(CtlError::Command(format!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Writes the unit into `unit_dir` (0644, atomically) for brisk-ctl at
/// `ctl`, then reloads systemd and enables and starts it where systemd
/// runs. Returns the unit's path and whether systemd took it. The caller
/// leaves a package's unit ([`PACKAGE_UNIT`]) to the package.
pub fn install(unit_dir: &Path, ctl: &Path, address: &Path) -> Result<(PathBuf, bool), CtlError> {
    let text = render(ctl, address)?;
    std::fs::create_dir_all(unit_dir).map_err(io(format!("create {}", unit_dir.display())))?;
    let unit = unit_dir.join(UNIT_NAME);
    let tmp = unit_dir.join(format!(".{UNIT_NAME}.new"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &unit).map_err(io(format!("rename to {}", unit.display())))?;
    let enabled = systemd_runs();
    if enabled {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
    }
    Ok((unit, enabled))
}

/// Stops, disables and removes a unit `install` wrote in `unit_dir`;
/// returns its path, or None when there is none of ours.
pub fn uninstall(unit_dir: &Path) -> Result<Option<PathBuf>, CtlError> {
    let unit = unit_dir.join(UNIT_NAME);
    match std::fs::read_to_string(&unit) {
        Ok(text) if text.starts_with(MARK) => {}
        Ok(_) => {
            return Err(CtlError::Refused(format!(
                "{} was not written by brisk-ctl; left alone",
                unit.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("read {}", unit.display()))(e)),
    }
    if systemd_runs() {
        systemctl(&["disable", "--now", UNIT_NAME])?;
    }
    std::fs::remove_file(&unit).map_err(io(format!("remove {}", unit.display())))?;
    if systemd_runs() {
        systemctl(&["daemon-reload"])?;
    }
    Ok(Some(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_install_runs_what_the_package_runs_with_its_own_paths() {
        let text = render(
            Path::new("/usr/local/bin/brisk-ctl"),
            Path::new("/run/k3s/containerd/containerd.sock"),
        )
        .unwrap();
        assert!(text.starts_with(MARK));
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        assert_eq!(
            exec,
            "/usr/local/bin/brisk-ctl --address /run/k3s/containerd/containerd.sock exporter \
             --listen 127.0.0.1:9807 --state /run/containerd"
        );
        let same = render(Path::new(TEMPLATE_CTL), Path::new(TEMPLATE_ADDRESS)).unwrap();
        assert_eq!(same, format!("{MARK}\n{TEMPLATE}"));
    }

    #[test]
    fn paths_systemd_would_split_or_expand_are_refused() {
        for bad in [
            "/opt/my tools/brisk-ctl",
            "relative/brisk-ctl",
            "/opt/%h/x",
            "/a;b",
        ] {
            assert!(
                render(Path::new(bad), Path::new(TEMPLATE_ADDRESS)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn uninstall_removes_only_a_unit_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(uninstall(dir.path()).unwrap(), None);
        let unit = dir.path().join(UNIT_NAME);
        std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n").unwrap();
        assert!(uninstall(dir.path()).is_err());
        assert!(unit.exists(), "an operator's own unit stays");
        std::fs::write(
            &unit,
            render(Path::new(TEMPLATE_CTL), Path::new(TEMPLATE_ADDRESS)).unwrap(),
        )
        .unwrap();
        if !systemd_runs() {
            assert_eq!(uninstall(dir.path()).unwrap(), Some(unit.clone()));
            assert!(!unit.exists());
        }
    }
}
