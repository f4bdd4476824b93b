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

/// True when some runtime of the config already uses brisk.
pub fn uses_brisk(text: &str) -> bool {
    text.contains(BRISK_RUNTIME_TYPE)
}

/// The operator's node, as `brisk-ctl` sees it.
pub struct Node {
    pub config: PathBuf,
    pub brisk_toml: PathBuf,
    pub bin_dir: PathBuf,
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

    pub fn shim_path(&self) -> PathBuf {
        self.bin_dir.join("containerd-shim-brisk-v2")
    }

    /// Copies the shim binary into place atomically (a running shim keeps
    /// its old inode).
    pub fn install(&self, from: &Path) -> Result<PathBuf> {
        let dest = self.shim_path();
        std::fs::create_dir_all(&self.bin_dir)
            .map_err(io(format!("create {}", self.bin_dir.display())))?;
        let tmp = self.bin_dir.join(".containerd-shim-brisk-v2.new");
        std::fs::copy(from, &tmp).map_err(io(format!(
            "copy {} to {}",
            from.display(),
            tmp.display()
        )))?;
        std::fs::rename(&tmp, &dest).map_err(io(format!("rename to {}", dest.display())))?;
        Ok(dest)
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
    /// removes it.
    pub fn probe(&self, ns: &str, image: &str) -> Result<Duration> {
        let started = Instant::now();
        let id = format!("brisk-probe-{}", std::process::id());
        let run = self.ctr(
            ns,
            &["run", "-d", "--runtime", BRISK_RUNTIME_TYPE, image, &id],
        );
        let mut result = run.map(drop);
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

    /// Removes the shim binary, unless a task still uses it.
    pub fn uninstall(&self) -> Result<()> {
        let users: Vec<String> = self
            .status()?
            .into_iter()
            .filter(|r| r.runtime == BRISK_RUNTIME_TYPE && r.task.is_some())
            .map(|r| format!("{}/{}", r.namespace, r.id))
            .collect();
        let shim = self.shim_path();
        let running = processes_running(&shim);
        if !users.is_empty() || !running.is_empty() {
            return Err(CtlError::Refused(format!(
                "brisk still serves tasks {users:?} (shim pids {running:?}); stop them or roll back first"
            )));
        }
        match std::fs::remove_file(&shim) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("remove {}", shim.display()))(e)),
        }
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

/// Pids whose executable is `binary`.
fn processes_running(binary: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| exe == binary)
                .unwrap_or(false)
        })
        .collect()
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
    fn ctr_columns() {
        let text = "CONTAINER    IMAGE    RUNTIME\nabc    img    io.containerd.brisk.v2\n";
        assert_eq!(
            parse_columns(text, 0, 2),
            vec![("abc".into(), BRISK_RUNTIME_TYPE.into())]
        );
    }
}
