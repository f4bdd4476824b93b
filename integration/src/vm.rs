//! The cgroup v2 lane: a Debian 12 guest (systemd as PID 1, cgroup v2) under
//! QEMU's TCG that runs the integration tests built on the host.
//!
//! The image comes from `scripts/vm/build-image.sh` (cached under
//! `target/vm`). The guest mounts the workspace read-only by 9p at the same
//! path as on the host, so the test executables, `target/images`, the shim
//! and the host-built containerd releases are where the harness looks for
//! them; a second 9p share is the results directory, where the driver writes
//! `job.sh` (run by the guest's `brisk-vm-job.service`, which powers the
//! guest off when it ends) and where the job leaves its logs, `summary.tsv`
//! and `exit-code`. The guest's serial console goes to `console.log`.
//!
//! qemu is started with `PR_SET_PDEATHSIG`, killed by its pid when the
//! driver gives up (a hard timeout, a signal) and on drop, so no run leaves
//! it behind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::sys;

/// The 9p tag of the results share; the image's fstab mounts it at `/results`.
pub const RESULTS_TAG: &str = "results";
/// The 9p tag of the workspace share (`job.sh` mounts it at the
/// workspace's path); further read-only shares are `ro1`, `ro2`, ...
pub const WORKSPACE_TAG: &str = "ws";

/// The read-only shares the guest needs: the workspace and those of `paths`
/// that are not below it (or below one another), each at its host path.
pub fn readonly_shares(workspace: &Path, paths: &[PathBuf]) -> Vec<Share> {
    let mut roots = vec![workspace.to_path_buf()];
    let mut sorted: Vec<&PathBuf> = paths.iter().collect();
    sorted.sort_by_key(|p| p.components().count());
    for p in sorted {
        if !roots.iter().any(|r| p.starts_with(r)) {
            roots.push(p.clone());
        }
    }
    roots
        .into_iter()
        .enumerate()
        .map(|(i, host)| Share {
            tag: if i == 0 {
                WORKSPACE_TAG.to_string()
            } else {
                format!("ro{i}")
            },
            host,
            readonly: true,
        })
        .collect()
}
/// Where the guest mounts the results share.
pub const GUEST_RESULTS: &str = "/results";

/// The files `scripts/vm/build-image.sh` leaves in an image directory.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Image {
    /// The image in `dir`, which must be complete.
    pub fn at(dir: &Path) -> Result<Self> {
        let img = Image {
            dir: dir.to_path_buf(),
            rootfs: dir.join("rootfs.img"),
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd.img"),
        };
        if !dir.join(".complete").exists() {
            bail!("{} is not a complete guest image", dir.display());
        }
        for f in [&img.rootfs, &img.kernel, &img.initrd] {
            if !f.is_file() {
                bail!("guest image file {} is missing", f.display());
            }
        }
        Ok(img)
    }

    /// Run `scripts/vm/build-image.sh VM_DIR` (which builds nothing when its
    /// cached image is there) and return the image it names.
    pub fn build(workspace: &Path, vm_dir: &Path) -> Result<Self> {
        let script = workspace.join("scripts/vm/build-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(vm_dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!("{} failed ({})", script.display(), out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let dir = text
            .lines()
            .last()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| anyhow!("{} printed no image directory", script.display()))?;
        Self::at(Path::new(dir))
    }
}

/// A host directory the guest mounts by 9p.
#[derive(Debug, Clone)]
pub struct Share {
    pub tag: String,
    pub host: PathBuf,
    pub readonly: bool,
}

/// How to run the guest.
#[derive(Debug, Clone)]
pub struct Machine {
    pub qemu: PathBuf,
    pub image: Image,
    /// vCPUs: TCG runs one host thread per vCPU, so more than the host's
    /// cores only adds contention.
    pub smp: u32,
    pub memory_mib: u32,
    pub shares: Vec<Share>,
    /// Where the serial console (kernel, systemd, the job's output) goes.
    pub console_log: PathBuf,
    /// qemu's own stdout and stderr.
    pub qemu_log: PathBuf,
}

impl Machine {
    /// The kernel command line: the image's root, cgroup v2 only, the
    /// console on the serial port, no reboot loop after a panic.
    pub fn kernel_cmdline(&self) -> String {
        "console=ttyS0 root=/dev/vda rw panic=-1 loglevel=4 \
         systemd.unified_cgroup_hierarchy=1 systemd.show_status=0"
            .to_string()
    }

    /// The qemu command: TCG (nested KVM is unusable on this kind of
    /// machine), the image's root disk as a throw-away snapshot (the cached
    /// image is never written), no network, no display.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        c.args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", &self.smp.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-display", "none", "-vga", "none", "-nic", "none"])
            .arg("-kernel")
            .arg(&self.image.kernel)
            .arg("-initrd")
            .arg(&self.image.initrd)
            .args(["-append", &self.kernel_cmdline()])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on,cache=unsafe",
                qemu_opt(&self.image.rootfs)
            ))
            .args(["-device", "virtio-rng-pci"])
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={}",
                qemu_opt(&self.console_log)
            ))
            .args(["-serial", "chardev:console"]);
        for s in &self.shares {
            c.arg("-virtfs").arg(format!(
                "local,path={},mount_tag={},security_model=none{}",
                qemu_opt(&s.host),
                s.tag,
                if s.readonly { ",readonly=on" } else { "" }
            ));
        }
        c
    }
}

/// A path as a qemu option value (a comma is doubled).
fn qemu_opt(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// A running guest. Dropping it kills qemu.
pub struct Guest {
    child: Option<Child>,
    pub started: Instant,
}

/// How a wait for the guest ended.
#[derive(Debug)]
pub enum Ended {
    /// qemu exited (the guest powered off, or qemu failed).
    Exited(ExitStatus),
    /// The deadline passed; qemu was killed.
    TimedOut,
    /// The stop flag was raised (a signal); qemu was killed.
    Stopped,
}

impl Guest {
    /// Start qemu. It gets `PR_SET_PDEATHSIG` (SIGKILL), so it dies with the
    /// driver even when the driver is killed outright.
    pub fn boot(machine: &Machine) -> Result<Self> {
        let log = fs::File::create(&machine.qemu_log)
            .with_context(|| format!("create {}", machine.qemu_log.display()))?;
        let mut cmd = machine.command();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl in the forked child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", machine.qemu.display()))?;
        Ok(Guest {
            child: Some(child),
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Wait until qemu exits, `deadline` passes or `stop` is raised; call
    /// `tick` about once a second meanwhile (progress reports). qemu is
    /// killed in the last two cases.
    pub fn wait(
        &mut self,
        deadline: Instant,
        stop: &AtomicBool,
        mut tick: impl FnMut(),
    ) -> Result<Ended> {
        let mut last_tick = Instant::now();
        loop {
            let child = self.child.as_mut().ok_or_else(|| anyhow!("qemu reaped"))?;
            if let Some(st) = child.try_wait()? {
                self.child = None;
                tick();
                return Ok(Ended::Exited(st));
            }
            if stop.load(Ordering::SeqCst) {
                self.kill();
                return Ok(Ended::Stopped);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Ok(Ended::TimedOut);
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                tick();
                last_tick = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL qemu by its pid and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::kill(c.id() as i32, libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test executables of `tests` (cargo target names of the
/// brisk-integration crate), built for release on the host by
/// `cargo test --release --no-run --message-format=json`. The workspace
/// links glibc statically, so they run in the guest as they are.
pub fn build_test_executables(
    workspace: &Path,
    tests: &[&str],
) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace).args([
        "test",
        "--release",
        "--no-run",
        "--workspace",
        "--message-format=json-render-diagnostics",
    ]);
    for t in tests {
        cmd.args(["--test", t]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn cargo test --no-run")?;
    let mut found = BTreeMap::new();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if tests.contains(&name) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("cargo test --no-run failed ({st})");
    }
    for t in tests {
        if !found.contains_key(*t) {
            bail!("cargo built no test executable {t}");
        }
    }
    Ok(found)
}

/// One test binary run in the guest: its output goes to
/// `/results/<release>/<name>.log`, a line to `/results/summary.tsv`.
#[derive(Debug, Clone)]
pub struct Group {
    /// The containerd release it runs against (a results subdirectory).
    pub release: String,
    pub name: String,
    pub executable: PathBuf,
    /// Test filters and flags for the libtest harness.
    pub args: Vec<String>,
    /// Environment on top of the job's.
    pub env: Vec<(String, String)>,
    /// Killed after this long (`timeout -k 30`).
    pub timeout: Duration,
}

/// What `job.sh` is made of.
#[derive(Debug, Clone)]
pub struct Job {
    /// Read-only 9p shares the job mounts at their host paths: (tag, path).
    /// The first is the workspace.
    pub mounts: Vec<(String, PathBuf)>,
    /// Environment of every group.
    pub env: Vec<(String, String)>,
    pub groups: Vec<Group>,
}

/// `s` as one shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn sh_path(p: &Path) -> String {
    sh_quote(&p.to_string_lossy())
}

impl Job {
    /// The script the guest runs as root at boot (POSIX sh). It mounts the
    /// workspace, writes what the guest is (`guest-info.txt`), runs every
    /// group under `timeout`, saves the journal, then writes `exit-code`
    /// (0 when every group passed) last.
    pub fn script(&self) -> String {
        let r = GUEST_RESULTS;
        let mut s = format!(
            r#"#!/bin/sh
# Written by brisk-vm (integration/src/vm.rs); run by brisk-vm-job.service.
set -u
R={r}
exec >>"$R/job.log" 2>&1
up() {{ cut -d' ' -f1 /proc/uptime; }}
echo "job: start at uptime $(up) s"
echo "$(up)" >"$R/boot-seconds"
# ro9p TAG PATH: a read-only share of the host at the same path.
ro9p() {{
    mkdir -p "$2" && mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 "$1" "$2" && return 0
    echo "job: cannot mount the share $1 at $2"
    echo 98 >"$R/exit-code"
    exit 1
}}
{mounts}{{
    uname -a
    echo "PID 1: $(cat /proc/1/comm)"
    grep -E ' - cgroup2? ' /proc/self/mountinfo
    echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
    systemctl --version | head -n1
    containerd --version
    runc --version | head -n1
    crun --version | head -n1
    nproc; free -m
}} >"$R/guest-info.txt" 2>&1
cd /tmp
"#,
            mounts = self
                .mounts
                .iter()
                .map(|(tag, p)| format!("ro9p {} {}\n", sh_quote(tag), sh_path(p)))
                .collect::<String>(),
        );
        for (k, v) in &self.env {
            let _ = writeln!(s, "export {k}={}", sh_quote(v));
        }
        s.push_str(
            r#"status=0
# run RELEASE GROUP TIMEOUT_S CMD...
run() {
    rel=$1 grp=$2 t=$3
    shift 3
    mkdir -p "$R/$rel"
    echo "job: $rel $grp: start at uptime $(up) s"
    s=$(up)
    timeout -k 30 "$t" "$@" >"$R/$rel/$grp.log" 2>&1
    rc=$?
    e=$(up)
    secs=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }')
    echo "job: $rel $grp: exit $rc after $secs s"
    printf '%s\t%s\t%s\t%s\n' "$rel" "$grp" "$rc" "$secs" >>"$R/summary.tsv"
    [ "$rc" -eq 0 ] || status=1
}
"#,
        );
        for g in &self.groups {
            let mut cmd = String::from("env");
            for (k, v) in &g.env {
                let _ = write!(cmd, " {k}={}", sh_quote(v));
            }
            let _ = write!(cmd, " {}", sh_path(&g.executable));
            for a in &g.args {
                let _ = write!(cmd, " {}", sh_quote(a));
            }
            let _ = writeln!(
                s,
                "run {} {} {} {cmd}",
                sh_quote(&g.release),
                sh_quote(&g.name),
                g.timeout.as_secs().max(1)
            );
        }
        s.push_str(
            r#"journalctl -b --no-pager -o short-monotonic >"$R/journal.log" 2>&1
echo "job: end at uptime $(up) s, status $status"
echo "$status" >"$R/exit-code.tmp"
mv "$R/exit-code.tmp" "$R/exit-code"
sync
"#,
        );
        s
    }
}

/// A line of `summary.tsv`.
#[derive(Debug, Clone)]
pub struct GroupResult {
    pub release: String,
    pub group: String,
    pub exit_code: i32,
    pub seconds: f64,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub ignored: usize,
}

/// The groups that finished, from `summary.tsv` and each group's log.
pub fn read_results(results: &Path) -> Vec<GroupResult> {
    let text = fs::read_to_string(results.join("summary.tsv")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 4 {
                return None;
            }
            let log = fs::read_to_string(results.join(f[0]).join(format!("{}.log", f[1])))
                .unwrap_or_default();
            let (passed, failed, ignored) = parse_libtest(&log);
            Some(GroupResult {
                release: f[0].to_string(),
                group: f[1].to_string(),
                exit_code: f[2].parse().unwrap_or(-1),
                seconds: f[3].parse().unwrap_or(0.0),
                passed,
                failed,
                ignored,
            })
        })
        .collect()
}

/// (passed, failed, ignored count) from libtest's `test NAME ... RESULT` lines
/// (also with `--report-time`'s `<1.234s>` after the result).
pub fn parse_libtest(log: &str) -> (Vec<String>, Vec<String>, usize) {
    let (mut passed, mut failed, mut ignored) = (Vec::new(), Vec::new(), 0);
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, outcome)) = rest.split_once(" ... ") else {
            continue;
        };
        let outcome = outcome.split_whitespace().next().unwrap_or("");
        match outcome {
            "ok" => passed.push(name.to_string()),
            "FAILED" => failed.push(name.to_string()),
            "ignored" => ignored += 1,
            _ => {}
        }
    }
    (passed, failed, ignored)
}

/// Per-test times from `--report-time` lines: (name, seconds).
pub fn test_times(log: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, outcome) = rest.split_once(" ... ")?;
            let t = outcome.split_once('<')?.1.strip_suffix("s>")?;
            Some((name.to_string(), t.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines() {
        let log = "running 3 tests\n\
                   test lifecycle::lifecycle_pod_brisk ... ok <12.345s>\n\
                   test exiting::x ... FAILED <1.000s>\n\
                   test shim_kill::shim_sigkill_runc ... ignored\n\
                   test result: FAILED. 1 passed; 1 failed; 1 ignored\n";
        let (p, f, i) = parse_libtest(log);
        assert_eq!(p, vec!["lifecycle::lifecycle_pod_brisk"]);
        assert_eq!(f, vec!["exiting::x"]);
        assert_eq!(i, 1);
        assert_eq!(
            test_times(log),
            vec![
                ("lifecycle::lifecycle_pod_brisk".to_string(), 12.345),
                ("exiting::x".to_string(), 1.0)
            ]
        );
    }

    #[test]
    fn job_script_quotes() {
        let job = Job {
            mounts: vec![("ws".into(), PathBuf::from("/work/it's"))],
            env: vec![("A".into(), "x y".into())],
            groups: vec![Group {
                release: "1.6.20".into(),
                name: "lifecycle".into(),
                executable: PathBuf::from("/work/it's/e2e"),
                args: vec!["lifecycle::".into()],
                env: vec![("B".into(), "1".into())],
                timeout: Duration::from_secs(60),
            }],
        };
        let s = job.script();
        assert!(s.contains("ro9p 'ws' '/work/it'\\''s'"), "{s}");
        assert!(s.contains("export A='x y'"), "{s}");
        assert!(
            s.contains("run '1.6.20' 'lifecycle' 60 env B='1' '/work/it'\\''s/e2e' 'lifecycle::'"),
            "{s}"
        );
    }

    #[test]
    fn shares_cover_paths_once() {
        let s = readonly_shares(
            Path::new("/w"),
            &[
                PathBuf::from("/w/target/x"),
                PathBuf::from("/v/a/b"),
                PathBuf::from("/v/a"),
            ],
        );
        let got: Vec<(String, PathBuf)> = s.into_iter().map(|s| (s.tag, s.host)).collect();
        assert_eq!(
            got,
            vec![
                ("ws".to_string(), PathBuf::from("/w")),
                ("ro1".to_string(), PathBuf::from("/v/a"))
            ]
        );
    }

    #[test]
    fn qemu_command() {
        let m = Machine {
            qemu: PathBuf::from("qemu-system-x86_64"),
            image: Image {
                dir: PathBuf::from("/i"),
                rootfs: PathBuf::from("/i/rootfs.img"),
                kernel: PathBuf::from("/i/vmlinux"),
                initrd: PathBuf::from("/i/initrd.img"),
            },
            smp: 2,
            memory_mib: 3072,
            shares: vec![Share {
                tag: "ws".into(),
                host: PathBuf::from("/a,b"),
                readonly: true,
            }],
            console_log: PathBuf::from("/r/console.log"),
            qemu_log: PathBuf::from("/r/qemu.log"),
        };
        let args: Vec<String> = m
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(
            &"local,path=/a,,b,mount_tag=ws,security_model=none,readonly=on".to_string()
        ));
        assert!(args.contains(
            &"file=/i/rootfs.img,format=raw,if=virtio,snapshot=on,cache=unsafe".to_string()
        ));
    }
}
