//! Driver for containerd's own client `ctr` (the non-CRI path).

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::sys;

#[derive(Debug, Clone)]
pub struct Ctr {
    /// The ctr binary: `$BRISK_CTR_BIN`, else the `ctr` next to
    /// `$BRISK_CONTAINERD_BIN`, else `ctr` on PATH.
    pub bin: std::path::PathBuf,
    pub address: String,
    pub namespace: String,
    pub timeout: Duration,
}

fn default_ctr_bin() -> std::path::PathBuf {
    let env = |v: &str| std::env::var_os(v).filter(|p| !p.is_empty());
    if let Some(p) = env("BRISK_CTR_BIN") {
        return p.into();
    }
    if let Some(c) = env("BRISK_CONTAINERD_BIN").or_else(|| env("BRISK_CONTAINERD")) {
        return crate::containerd::ctr_next_to(std::path::Path::new(&c));
    }
    "ctr".into()
}

impl Ctr {
    pub fn new(address: &str, namespace: &str) -> Self {
        Ctr {
            bin: default_ctr_bin(),
            address: address.into(),
            namespace: namespace.into(),
            timeout: Duration::from_secs(60),
        }
    }

    /// `ctr -a ADDR -n NS ARGS...` (not run).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace)
            .args(args);
        c
    }

    /// Run and return the output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        sys::run_with_timeout(&mut self.command(args), self.timeout)
    }

    /// Run, require success, return stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "ctr {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr run --rm --runtime RUNTIME [--cgroup CGROUP] IMAGE ID CMD...`:
    /// the whole output, whatever the exit status.
    pub fn run_rm(
        &self,
        runtime: &str,
        cgroup: Option<&str>,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> Result<Output> {
        self.run_rm_with(runtime, cgroup, &[], image, id, cmd)
    }

    /// [`Ctr::run_rm`] with more `ctr run` flags (`--log-uri URI`, ...).
    pub fn run_rm_with(
        &self,
        runtime: &str,
        cgroup: Option<&str>,
        flags: &[&str],
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> Result<Output> {
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        if let Some(cg) = cgroup {
            args.extend_from_slice(&["--cgroup", cg]);
        }
        args.extend_from_slice(flags);
        args.extend_from_slice(&[image, id]);
        args.extend_from_slice(cmd);
        self.output(&args)
    }

    pub fn import(&self, tar: &std::path::Path) -> Result<()> {
        self.run(&["images", "import", &tar.to_string_lossy()])?;
        Ok(())
    }

    /// IDs of the tasks in our namespace with their status (`RUNNING`, `PAUSED`, ...).
    pub fn tasks(&self) -> Result<Vec<(String, String)>> {
        let out = self.run(&["tasks", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[0].to_string(), f[2].to_string()))
            })
            .collect())
    }

    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .tasks()?
            .into_iter()
            .find(|(t, _)| t == id)
            .map(|(_, s)| s))
    }

    /// Pids listed by `ctr task ps ID`.
    pub fn task_pids(&self, id: &str) -> Result<Vec<i32>> {
        let out = self.run(&["tasks", "ps", id])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect())
    }

    pub fn containers(&self) -> Result<Vec<String>> {
        let out = self.run(&["containers", "ls", "-q"])?;
        Ok(out
            .lines()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect())
    }

    /// Kill and delete every task and container in the namespace (best effort).
    pub fn remove_everything(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let tasks = match self.tasks() {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("ctr tasks ls: {e:#}"));
                Vec::new()
            }
        };
        for (id, status) in &tasks {
            if status == "PAUSED" {
                let _ = self.output(&["tasks", "resume", id]);
            }
            if status != "STOPPED" {
                let _ = self.output(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            }
        }
        for (id, _) in &tasks {
            let mut ok = false;
            for _ in 0..50 {
                match self.output(&["tasks", "rm", "-f", id]) {
                    Ok(o) if o.status.success() => {
                        ok = true;
                        break;
                    }
                    Ok(o) if String::from_utf8_lossy(&o.stderr).contains("not found") => {
                        ok = true;
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            if !ok {
                errors.push(format!("ctr tasks rm {id} failed"));
            }
        }
        match self.containers() {
            Ok(cs) => {
                for id in cs {
                    if let Err(e) = self.run(&["containers", "rm", &id]) {
                        errors.push(format!("{e:#}"));
                    }
                }
            }
            Err(e) => errors.push(format!("ctr containers ls: {e:#}")),
        }
        errors
    }
}
