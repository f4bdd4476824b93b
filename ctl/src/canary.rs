//! The canary swap, as `brisk-ctl` runs it: edit containerd's config to use
//! brisk (after a backup), validate it, restart containerd, probe, and roll
//! back. The config edits are pure functions of the TOML document, so they
//! are tested without a containerd.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use toml_edit::{value, Array, DocumentMut, Item, Table};

pub const BRISK_RUNTIME_TYPE: &str = "io.containerd.brisk.v2";

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{0}")]
    Command(String),
    #[error("refusing: {0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CtlError>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CtlError {
    let context = context.into();
    move |source| CtlError::Io { context, source }
}

/// Where CRI's runtimes live in each config version.
fn runtimes_path(version: i64) -> Option<[&'static str; 4]> {
    match version {
        2 => Some([
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]),
        3 => Some([
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]),
        _ => None,
    }
}

fn table_at<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> &'a mut Table {
    let mut t = doc.as_table_mut();
    for key in path {
        let entry = t.entry(key).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        t = entry.as_table_mut().expect("config path is a table");
    }
    t
}

/// What `enable` changed, for the report.
#[derive(Debug, PartialEq)]
pub struct Edit {
    pub handler: String,
    /// brisk.toml settings carried over from the runc handler's options.
    pub carried: Vec<(String, String)>,
}

/// Points a handler at brisk. With `canary`, the default `runc` handler
/// itself runs brisk; its runc options (which containerd only hands to runc
/// runtime types) move into brisk.toml. Without it, a `brisk` handler is added.
pub fn enable_in(
    doc: &mut DocumentMut,
    canary: bool,
    brisk_toml: &Path,
) -> std::result::Result<Edit, String> {
    let version = doc.get("version").and_then(Item::as_integer).unwrap_or(1);
    let path = runtimes_path(version).ok_or(format!(
        "config version {version} is not supported (2 or 3)"
    ))?;
    let runtimes = table_at(doc, &path);
    let handler = if canary { "runc" } else { "brisk" };
    let rt = runtimes
        .entry(handler)
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or(format!("runtime {handler} is not a table"))?;
    let mut carried = Vec::new();
    if let Some(opts) = rt.get("options").and_then(Item::as_table) {
        if let Some(b) = opts
            .get("BinaryName")
            .and_then(Item::as_str)
            .filter(|s| !s.is_empty())
        {
            carried.push(("runc_binary".into(), format!("{b:?}")));
        }
        if let Some(r) = opts
            .get("Root")
            .and_then(Item::as_str)
            .filter(|s| !s.is_empty())
        {
            carried.push(("runc_root".into(), format!("{r:?}")));
        }
        if let Some(s) = opts.get("SystemdCgroup").and_then(Item::as_bool) {
            carried.push(("systemd_cgroup".into(), s.to_string()));
        }
    }
    rt.insert("runtime_type", value(BRISK_RUNTIME_TYPE));
    let mut ann = Array::new();
    ann.push("io.containerd.brisk.*");
    rt.insert("pod_annotations", value(ann));
    let mut opts = Table::new();
    opts.insert("ConfigPath", value(brisk_toml.display().to_string()));
    rt.insert("options", Item::Table(opts));
    Ok(Edit {
        handler: handler.into(),
        carried,
    })
}

/// CRI's sandbox (pause) image in `containerd config dump` output:
/// `sandbox_image = "..."` (config version 2) or, under
/// `pinned_images`, `sandbox = '...'` (version 3).
pub fn sandbox_image_in(dump: &str) -> Option<String> {
    dump.lines().find_map(|l| {
        let (key, val) = l.split_once('=')?;
        if !matches!(key.trim(), "sandbox_image" | "sandbox") {
            return None;
        }
        let val = val.trim().trim_matches(|c| c == '"' || c == '\'');
        (!val.is_empty()).then(|| val.to_string())
    })
}

/// True when some runtime of the config already uses brisk.
pub fn uses_brisk(text: &str) -> bool {
    text.contains(BRISK_RUNTIME_TYPE)
}

/// The shim's file name; containerd finds it on its PATH by runtime type.
pub const SHIM_NAME: &str = "containerd-shim-brisk-v2";
/// Where `brisk-ctl install` puts the shim by default: a hand install, out of
/// the package manager's way.
pub const HAND_INSTALL_DIR: &str = "/usr/local/bin";
/// brisk-ctl's own name, installed beside the shim by `install --exporter`.
pub const CTL_NAME: &str = "brisk-ctl";
/// Where the Debian package installs it (`[package.metadata.deb]`).
pub const PACKAGE_INSTALL_DIR: &str = "/usr/bin";

/// A shim binary found on the node.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledShim {
    pub path: PathBuf,
    /// The Debian package that owns the file; None for a hand install.
    pub package: Option<String>,
}

impl InstalledShim {
    /// "installed by hand" or "from package NAME", for messages.
    pub fn origin(&self) -> String {
        match &self.package {
            Some(p) => format!("from package {p}"),
            None => "installed by hand".into(),
        }
    }
}

/// The operator's node, as `brisk-ctl` sees it.
pub struct Node {
    pub config: PathBuf,
    pub brisk_toml: PathBuf,
    /// `--bin-dir`: the one directory to install into, look at and remove
    /// from. None: install into [`HAND_INSTALL_DIR`], and look at both it
    /// and [`PACKAGE_INSTALL_DIR`].
    pub bin_dir: Option<PathBuf>,
    pub address: PathBuf,
    pub restart_cmd: String,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
}

impl Node {
    pub fn backup_path(&self) -> PathBuf {
        let mut p = self.config.clone().into_os_string();
        p.push(".brisk-backup");
        PathBuf::from(p)
    }

    /// Where `install` puts the shim.
    pub fn install_path(&self) -> PathBuf {
        self.bin_dir
            .as_deref()
            .unwrap_or(Path::new(HAND_INSTALL_DIR))
            .join(SHIM_NAME)
    }

    /// Where a shim may be installed: `--bin-dir`, else the hand-install
    /// and the package directories.
    pub fn shim_candidates(&self) -> Vec<PathBuf> {
        match &self.bin_dir {
            Some(d) => vec![d.join(SHIM_NAME)],
            None => [HAND_INSTALL_DIR, PACKAGE_INSTALL_DIR]
                .iter()
                .map(|d| Path::new(d).join(SHIM_NAME))
                .collect(),
        }
    }

    /// The shim binaries present at [`Node::shim_candidates`], with the
    /// package owning each.
    pub fn installed_shims(&self) -> Vec<InstalledShim> {
        self.shim_candidates()
            .into_iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|path| InstalledShim {
                package: dpkg_owner(&path),
                path,
            })
            .collect()
    }

    /// Copies the shim binary into place atomically (a running shim keeps
    /// its old inode). Refuses to overwrite a file of a package: the
    /// package manager would not know, and would put its own back.
    pub fn install(&self, from: &Path) -> Result<PathBuf> {
        self.install_binary(from, &self.install_path())
    }

    /// Copies brisk-ctl itself next to the shim (for the exporter's unit),
    /// unless it runs from there already.
    pub fn install_ctl(&self, from: &Path) -> Result<PathBuf> {
        let dest = self.install_path().with_file_name(CTL_NAME);
        if std::fs::canonicalize(from).ok() == std::fs::canonicalize(&dest).ok() {
            return Ok(dest);
        }
        self.install_binary(from, &dest)
    }

    fn install_binary(&self, from: &Path, dest: &Path) -> Result<PathBuf> {
        if let Some(pkg) = dpkg_owner(dest) {
            return Err(CtlError::Refused(format!(
                "{} belongs to the Debian package {pkg}: upgrade the package (apt-get install {pkg}) \
                 or pass --bin-dir {HAND_INSTALL_DIR} for a hand install",
                dest.display()
            )));
        }
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(SHIM_NAME);
        let dir = dest.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::copy(from, &tmp).map_err(io(format!(
            "copy {} to {}",
            from.display(),
            tmp.display()
        )))?;
        std::fs::rename(&tmp, dest).map_err(io(format!("rename to {}", dest.display())))?;
        Ok(dest.to_path_buf())
    }

    fn ctr(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.ctr)
            .arg("-a")
            .arg(&self.address)
            .args(["-n", ns])
            .args(args)
            .output()
            .map_err(io(format!("run {}", self.ctr.display())))?;
        if !out.status.success() {
            return Err(CtlError::Command(format!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Edits the config for brisk, after a backup, and checks that
    /// containerd accepts the result. Returns the edit made.
    pub fn write_enabled_config(&self, canary: bool) -> Result<Edit> {
        let text = std::fs::read_to_string(&self.config)
            .map_err(io(format!("read {}", self.config.display())))?;
        let mut doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| CtlError::Config {
                    path: self.config.clone(),
                    reason: e.to_string(),
                })?;
        let edit =
            enable_in(&mut doc, canary, &self.brisk_toml).map_err(|reason| CtlError::Config {
                path: self.config.clone(),
                reason,
            })?;
        // The first backup holds the config from before brisk; keep it.
        if !self.backup_path().exists() {
            std::fs::copy(&self.config, self.backup_path())
                .map_err(io("back up the containerd config"))?;
        }
        if !self.brisk_toml.exists() {
            let mut body = String::from(
                "# Written by brisk-ctl enable; see configs/brisk.toml for every key.\n",
            );
            for (k, v) in &edit.carried {
                body.push_str(&format!("{k} = {v}\n"));
            }
            std::fs::write(&self.brisk_toml, body)
                .map_err(io(format!("write {}", self.brisk_toml.display())))?;
        }
        let candidate = self.config.with_extension("brisk-candidate");
        std::fs::write(&candidate, doc.to_string()).map_err(io("write candidate config"))?;
        let checked = self.validate(&candidate);
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&candidate);
            return Err(e);
        }
        std::fs::rename(&candidate, &self.config).map_err(io("install the new config"))?;
        Ok(edit)
    }

    /// `containerd config dump` of `config` must succeed and show brisk.
    pub fn validate(&self, config: &Path) -> Result<()> {
        let out = Command::new(&self.containerd)
            .arg("--config")
            .arg(config)
            .args(["config", "dump"])
            .output()
            .map_err(io(format!("run {}", self.containerd.display())))?;
        if !out.status.success() {
            return Err(CtlError::Config {
                path: config.to_path_buf(),
                reason: format!(
                    "containerd rejects it: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        if !uses_brisk(&String::from_utf8_lossy(&out.stdout)) {
            return Err(CtlError::Config {
                path: config.to_path_buf(),
                reason: "containerd loaded it but no runtime uses brisk".into(),
            });
        }
        Ok(())
    }

    /// Runs the restart command and waits for containerd to answer.
    pub fn restart(&self) -> Result<Duration> {
        let started = Instant::now();
        let status = Command::new("sh")
            .args(["-c", &self.restart_cmd])
            .status()
            .map_err(io("run the restart command"))?;
        if !status.success() {
            return Err(CtlError::Command(format!(
                "restart command {:?} failed: {status}",
                self.restart_cmd
            )));
        }
        while started.elapsed() < Duration::from_secs(60) {
            if self.ctr("default", &["version"]).is_ok() {
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(CtlError::Command(
            "containerd did not answer within 60s of the restart".into(),
        ))
    }

    /// Runs a container of `image` under brisk, sees it RUNNING, stops and
    /// removes it. It gets brisk.toml as its `ConfigPath`, as CRI's pods do,
    /// so that a brisk.toml the shim rejects fails the probe. `cgroup` is
    /// ctr's `--cgroup` (default: ctr's own, `/<namespace>/<id>`); cgroupfs
    /// directories created for the probe are removed after it.
    pub fn probe(&self, ns: &str, image: &str, cgroup: Option<&str>) -> Result<Duration> {
        let started = Instant::now();
        let id = format!("brisk-probe-{}", std::process::id());
        let cgroup = cgroup
            .map(String::from)
            .unwrap_or_else(|| format!("/{ns}/{id}"));
        let created = missing_cgroup_dirs(&cgroup_roots(), &cgroup);
        let mut args = vec!["run", "-d", "--runtime", BRISK_RUNTIME_TYPE, "--cgroup"];
        args.push(&cgroup);
        let config_path = self.brisk_toml.to_string_lossy();
        if self.brisk_toml.exists() {
            args.extend(["--runtime-config-path", &config_path]);
        }
        args.extend([image, &id]);
        let mut result = self.ctr(ns, &args).map(drop);
        if result.is_ok() {
            result = Err(CtlError::Command(format!("probe {id} never ran")));
            for _ in 0..100 {
                if self
                    .ctr(ns, &["tasks", "ls"])?
                    .lines()
                    .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
                {
                    result = Ok(());
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.ctr(ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
        for _ in 0..50 {
            if self.ctr(ns, &["tasks", "rm", &id]).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr(ns, &["containers", "rm", &id]);
        remove_empty_dirs(&created);
        result.map(|()| started.elapsed())
    }

    /// Puts the backed-up config back.
    pub fn restore_config(&self) -> Result<()> {
        let backup = self.backup_path();
        if !backup.exists() {
            return Err(CtlError::Refused(format!(
                "no backup at {}; nothing to roll back",
                backup.display()
            )));
        }
        std::fs::copy(&backup, &self.config).map_err(io("restore the containerd config"))?;
        std::fs::remove_file(&backup).map_err(io("remove the backup"))?;
        Ok(())
    }

    /// Every container with its runtime and task status, per namespace.
    pub fn status(&self) -> Result<Vec<TaskRow>> {
        let mut rows = Vec::new();
        for ns in self.ctr("default", &["namespaces", "ls", "-q"])?.lines() {
            let runtimes = parse_columns(&self.ctr(ns, &["containers", "ls"])?, 0, 2);
            let tasks = parse_columns(&self.ctr(ns, &["tasks", "ls"])?, 0, 2);
            for (id, runtime) in runtimes {
                let status = tasks.iter().find(|(t, _)| *t == id).map(|(_, s)| s.clone());
                rows.push(TaskRow {
                    namespace: ns.to_string(),
                    id,
                    runtime,
                    task: status,
                });
            }
        }
        Ok(rows)
    }

    /// Removes the hand-installed shim binaries, unless one belongs to a
    /// package (apt's to remove: checked first, without containerd) or a
    /// task still uses brisk. Returns the files removed.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>> {
        let installed = self.installed_shims();
        if let Some(s) = installed.iter().find(|s| s.package.is_some()) {
            let pkg = s.package.as_deref().unwrap_or_default();
            return Err(CtlError::Refused(format!(
                "{} belongs to the Debian package {pkg}: remove it with `apt-get remove {pkg}`{}",
                s.path.display(),
                if self.bin_dir.is_none() {
                    format!(" (--bin-dir {HAND_INSTALL_DIR} removes only a hand install)")
                } else {
                    String::new()
                }
            )));
        }
        let users: Vec<String> = self
            .status()?
            .into_iter()
            .filter(|r| r.runtime == BRISK_RUNTIME_TYPE && r.task.is_some())
            .map(|r| format!("{}/{}", r.namespace, r.id))
            .collect();
        let running: Vec<i32> = installed
            .iter()
            .flat_map(|s| processes_running(&s.path))
            .collect();
        if !users.is_empty() || !running.is_empty() {
            return Err(CtlError::Refused(format!(
                "brisk still serves tasks {users:?} (shim pids {running:?}); stop them or roll back first"
            )));
        }
        let mut removed = Vec::new();
        for s in installed {
            std::fs::remove_file(&s.path).map_err(io(format!("remove {}", s.path.display())))?;
            removed.push(s.path);
        }
        Ok(removed)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub namespace: String,
    pub id: String,
    pub runtime: String,
    /// The task's status, when the container has a task.
    pub task: Option<String>,
}

/// (first, nth) columns of `ctr ... ls` output, without the header.
fn parse_columns(text: &str, a: usize, b: usize) -> Vec<(String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.get(a)?.to_string(), cols.get(b)?.to_string()))
        })
        .collect()
}

/// Pids whose executable is `binary`, also when it has been replaced or
/// removed since they started (then /proc shows it as "PATH (deleted)").
fn processes_running(binary: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| exe_is(&exe, binary))
                .unwrap_or(false)
        })
        .collect()
}

/// True when `exe`, a /proc/PID/exe link target, names `binary`.
fn exe_is(exe: &Path, binary: &Path) -> bool {
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Path::new(exe) == binary
}

/// The Debian package that owns `path`, by `dpkg-query -S`; None when no
/// package does or there is no dpkg.
fn dpkg_owner(path: &Path) -> Option<String> {
    let out = Command::new("dpkg-query")
        .arg("-S")
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_dpkg_search(&String::from_utf8_lossy(&out.stdout), path)
}

/// The first package of `dpkg-query -S PATH` output lines ("pkg1, pkg2:
/// PATH") that name exactly `path`; diversion lines are skipped.
fn parse_dpkg_search(text: &str, path: &Path) -> Option<String> {
    text.lines()
        .filter(|l| !l.starts_with("diversion "))
        .filter_map(|l| l.split_once(": "))
        .find(|(_, p)| Path::new(p.trim()) == path)
        .and_then(|(pkgs, _)| pkgs.split(',').next())
        .map(|p| p.trim().to_string())
}

/// The cgroupfs hierarchies: `/sys/fs/cgroup` itself on cgroup v2, else
/// each controller's directory (symlinks such as `cpu` -> `cpu,cpuacct`
/// left out).
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

/// The directories that a cgroupfs path (`/a/b/c`) would create below
/// `roots`, deepest first. A systemd-style path (`slice:prefix:name`) has
/// none: systemd removes its units.
fn missing_cgroup_dirs(roots: &[PathBuf], cgroup: &str) -> Vec<PathBuf> {
    if !cgroup.starts_with('/') {
        return Vec::new();
    }
    let mut out = Vec::new();
    for root in roots {
        let mut dir = root.clone();
        for part in cgroup.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                out.push(dir.clone());
            }
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    out
}

/// rmdir each of `dirs` in order; a cgroup that still has processes or
/// children stays.
fn remove_empty_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"version = 2
# keep this comment
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
      BinaryName = "/usr/sbin/runc"
"#;

    #[test]
    fn canary_moves_runc_options_into_brisk_toml() {
        let mut doc: DocumentMut = V2.parse().unwrap();
        let edit = enable_in(&mut doc, true, Path::new("/etc/containerd/brisk.toml")).unwrap();
        assert_eq!(edit.handler, "runc");
        assert!(edit
            .carried
            .contains(&("systemd_cgroup".into(), "true".into())));
        assert!(edit
            .carried
            .contains(&("runc_binary".into(), "\"/usr/sbin/runc\"".into())));
        let out = doc.to_string();
        assert!(out.contains("# keep this comment"));
        let reparsed: toml::Value = toml::from_str(&out).unwrap();
        let runc =
            &reparsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some(BRISK_RUNTIME_TYPE));
        assert_eq!(
            runc["options"]["ConfigPath"].as_str(),
            Some("/etc/containerd/brisk.toml")
        );
        assert!(runc["options"].get("SystemdCgroup").is_none());
    }

    #[test]
    fn handler_is_added_for_v3() {
        let mut doc: DocumentMut = "version = 3\n".parse().unwrap();
        enable_in(&mut doc, false, Path::new("/b.toml")).unwrap();
        let v: toml::Value = toml::from_str(&doc.to_string()).unwrap();
        let brisk =
            &v["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["brisk"];
        assert_eq!(brisk["runtime_type"].as_str(), Some(BRISK_RUNTIME_TYPE));
    }

    #[test]
    fn old_config_versions_are_refused() {
        let mut doc: DocumentMut = "root = \"/x\"\n".parse().unwrap();
        assert!(enable_in(&mut doc, true, Path::new("/b.toml"))
            .unwrap_err()
            .contains("version 1"));
    }

    #[test]
    fn replaced_binaries_still_count_as_running() {
        let bin = Path::new("/usr/local/bin/containerd-shim-brisk-v2");
        assert!(exe_is(bin, bin));
        assert!(exe_is(
            Path::new("/usr/local/bin/containerd-shim-brisk-v2 (deleted)"),
            bin
        ));
        assert!(!exe_is(Path::new("/usr/bin/containerd-shim-brisk-v2"), bin));
    }

    #[test]
    fn dpkg_search_output() {
        let p = Path::new("/usr/bin/containerd-shim-brisk-v2");
        assert_eq!(
            parse_dpkg_search("brisk: /usr/bin/containerd-shim-brisk-v2\n", p),
            Some("brisk".into())
        );
        assert_eq!(
            parse_dpkg_search(
                "diversion by x from: /usr/bin/containerd-shim-brisk-v2\nbrisk, other: /usr/bin/containerd-shim-brisk-v2\n",
                p
            ),
            Some("brisk".into())
        );
        assert_eq!(parse_dpkg_search("brisk: /usr/bin/brisk-ctl\n", p), None);
        assert_eq!(parse_dpkg_search("", p), None);
    }

    #[test]
    fn probe_cgroup_dirs_to_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let (mem, pids) = (tmp.path().join("memory"), tmp.path().join("pids"));
        std::fs::create_dir_all(mem.join("k8s.io")).unwrap();
        std::fs::create_dir_all(&pids).unwrap();
        let roots = [mem.clone(), pids.clone()];
        let missing = missing_cgroup_dirs(&roots, "/k8s.io/probe");
        assert_eq!(
            missing,
            vec![
                mem.join("k8s.io/probe"),
                pids.join("k8s.io/probe"),
                pids.join("k8s.io")
            ]
        );
        assert!(missing_cgroup_dirs(&roots, "system.slice:brisk:probe").is_empty());
        for d in &missing {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_empty_dirs(&missing);
        assert!(mem.join("k8s.io").is_dir(), "what existed before stays");
        assert!(!pids.join("k8s.io").exists());
    }

    #[test]
    fn hand_install_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("shim");
        std::fs::write(&from, "binary").unwrap();
        let node = Node {
            config: tmp.path().join("config.toml"),
            brisk_toml: tmp.path().join("brisk.toml"),
            bin_dir: Some(tmp.path().join("bin")),
            address: tmp.path().join("sock"),
            restart_cmd: "true".into(),
            containerd: "containerd".into(),
            ctr: "ctr".into(),
        };
        let dest = node.install(&from).unwrap();
        assert_eq!(dest, tmp.path().join("bin").join(SHIM_NAME));
        assert_eq!(
            node.installed_shims(),
            vec![InstalledShim {
                path: dest,
                package: None
            }]
        );
    }

    #[test]
    fn default_dirs() {
        let node = Node {
            config: "/c".into(),
            brisk_toml: "/b".into(),
            bin_dir: None,
            address: "/s".into(),
            restart_cmd: String::new(),
            containerd: "containerd".into(),
            ctr: "ctr".into(),
        };
        assert_eq!(
            node.install_path(),
            Path::new("/usr/local/bin/containerd-shim-brisk-v2")
        );
        assert_eq!(
            node.shim_candidates(),
            vec![
                PathBuf::from("/usr/local/bin/containerd-shim-brisk-v2"),
                PathBuf::from("/usr/bin/containerd-shim-brisk-v2")
            ]
        );
    }

    #[test]
    fn sandbox_image_of_either_config_version() {
        let v2 = "[plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.6\"\n";
        assert_eq!(
            sandbox_image_in(v2).as_deref(),
            Some("registry.k8s.io/pause:3.6")
        );
        let v3 = "    [plugins.'io.containerd.cri.v1.images'.pinned_images]\n      sandbox = 'registry.k8s.io/pause:3.10'\n          sandboxer = 'podsandbox'\n";
        assert_eq!(
            sandbox_image_in(v3).as_deref(),
            Some("registry.k8s.io/pause:3.10")
        );
        assert_eq!(sandbox_image_in("sandboxer = 'podsandbox'\n"), None);
    }

    #[test]
    fn ctr_columns() {
        let text = "CONTAINER    IMAGE    RUNTIME\nabc    img    io.containerd.brisk.v2\n";
        assert_eq!(
            parse_columns(text, 0, 2),
            vec![("abc".into(), BRISK_RUNTIME_TYPE.into())]
        );
    }
}
