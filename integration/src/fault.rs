//! Fault injection for tests: a runc wrapper that hangs or fails chosen
//! subcommands on demand, and strace delaying a shim's `umount2` calls.
//! Both only touch processes the test started (or the one pid it names).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys;

/// The longest a wrapped runc call hangs when nobody releases it.
pub const MAX_HANG: Duration = Duration::from_secs(20);

/// How long a "slow" runc call lingers after runc itself is done.
pub const SLOW_AFTER: Duration = Duration::from_millis(500);

/// A shell script given to brisk as `runc_binary`. It runs the real runc,
/// except that for a subcommand `SUB`:
///
/// * `CTL/fail-SUB` present: print an error (to stderr and to runc's JSON
///   log) and exit 1;
/// * `CTL/hang-SUB` present: note the call in `CTL/hung`, then wait until
///   the file is removed (at most [`MAX_HANG`]) before running runc;
/// * `CTL/slow-SUB` present: run runc, then linger [`SLOW_AFTER`] before
///   exiting with runc's status (runc's effect is there, its answer late).
///
/// Every call is noted in `CTL/calls` ([`RuncWrapper::calls`]).
///
/// An empty control file applies to every container; otherwise it lists the
/// container ids it applies to, one a line (matched against every argument). Dropping the wrapper releases
/// every hung call.
#[derive(Debug)]
pub struct RuncWrapper {
    /// The script, to put in brisk.toml as `runc_binary`.
    pub path: PathBuf,
    /// The control directory.
    pub ctl: PathBuf,
}

/// The real runc on PATH (or in the usual sbin directories).
pub fn real_runc() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join("runc"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| PathBuf::from("/usr/sbin/runc"))
}

impl RuncWrapper {
    /// Where [`RuncWrapper::install`] puts the script below `dir`, for a
    /// brisk.toml written before the wrapper exists (`{dir}/fault/runc`).
    pub const SCRIPT_IN_DIR: &'static str = "fault/runc";
    /// The same script under a name other than runc's: brisk takes it for
    /// another OCI runtime and leaves every delete to it (the shim tears an
    /// exited container down itself for runc alone), for tests of a slow or
    /// hung `runc delete` at a container's exit.
    pub const OTHER_RUNTIME_IN_DIR: &'static str = "fault/oci-runtime";

    /// Write the wrapper to `dir/fault/runc`, controlled from `dir/fault/ctl`.
    pub fn install(dir: &Path) -> Result<Self> {
        let base = dir.join("fault");
        let ctl = base.join("ctl");
        fs::create_dir_all(&ctl)?;
        let path = dir.join(Self::SCRIPT_IN_DIR);
        let script = format!(
            r#"#!/bin/sh
# brisk integration test runc wrapper
ctl='{ctl}'
sub=
log=
prev=
for a in "$@"; do
  if [ "$prev" = "--log" ]; then log=$a; fi
  prev=$a
  if [ -z "$sub" ]; then
    case "$a" in
      create|start|run|update|ps|delete|kill|exec|state|pause|resume|events|list|features) sub=$a ;;
    esac
  fi
done
for last in "$@"; do :; done
allargs=$(printf '%s\n' "$@")
[ -n "$sub" ] && echo "$sub $*" >> "$ctl/calls"
applies() {{
  [ -e "$1" ] || return 1
  [ -s "$1" ] || return 0
  printf '%s\n' "$allargs" | grep -qxF -f "$1"
}}
if [ -n "$sub" ] && applies "$ctl/fail-$sub"; then
  msg="brisk test wrapper: runc $sub of $last fails on purpose"
  echo "$msg" >&2
  if [ -n "$log" ]; then
    printf '{{"level":"error","msg":"%s","time":"2000-01-01T00:00:00Z"}}\n' "$msg" >> "$log"
  fi
  exit 1
fi
if [ -n "$sub" ] && applies "$ctl/hang-$sub"; then
  echo "$sub $last $$" >> "$ctl/hung"
  i=0
  while [ -e "$ctl/hang-$sub" ] && [ $i -lt {ticks} ]; do
    sleep 0.1
    i=$((i+1))
  done
fi
if [ -n "$sub" ] && applies "$ctl/slow-$sub"; then
  '{runc}' "$@"
  rc=$?
  echo "$sub $last $$" >> "$ctl/slowed"
  sleep {slow_after}
  exit $rc
fi
exec '{runc}' "$@"
"#,
            ctl = ctl.display(),
            runc = real_runc().display(),
            ticks = MAX_HANG.as_millis() / 100,
            slow_after = SLOW_AFTER.as_secs_f64(),
        );
        let tmp = base.join(".runc.tmp");
        fs::write(&tmp, script)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &path)?;
        let other = dir.join(Self::OTHER_RUNTIME_IN_DIR);
        let _ = fs::remove_file(&other);
        fs::hard_link(&path, &other)?;
        Ok(RuncWrapper { path, ctl })
    }

    /// A brisk.toml line that makes brisk use this wrapper.
    pub fn toml_line(&self) -> String {
        format!("runc_binary = \"{}\"\n", self.path.display())
    }

    fn set(&self, kind: &str, sub: &str, ids: &[&str]) -> Result<()> {
        let tmp = self.ctl.join(format!(".{kind}-{sub}.tmp"));
        let mut body = ids.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        fs::write(&tmp, body)?;
        fs::rename(&tmp, self.ctl.join(format!("{kind}-{sub}")))
            .with_context(|| format!("set {kind}-{sub}"))
    }

    /// Make `runc SUB` hang for these container ids (all when empty).
    pub fn hang(&self, sub: &str, ids: &[&str]) -> Result<()> {
        self.set("hang", sub, ids)
    }

    /// Let the hung `runc SUB` calls go on, and stop hanging new ones.
    pub fn release(&self, sub: &str) {
        let _ = fs::remove_file(self.ctl.join(format!("hang-{sub}")));
    }

    /// Make `runc SUB` fail for these container ids (all when empty).
    pub fn fail(&self, sub: &str, ids: &[&str]) -> Result<()> {
        self.set("fail", sub, ids)
    }

    /// Make `runc SUB` answer [`SLOW_AFTER`] late (after it did its work)
    /// for these container ids (all when empty).
    pub fn slow(&self, sub: &str, ids: &[&str]) -> Result<()> {
        self.set("slow", sub, ids)
    }

    /// Stop failing `runc SUB`.
    pub fn unfail(&self, sub: &str) {
        let _ = fs::remove_file(self.ctl.join(format!("fail-{sub}")));
    }

    /// Release every hang and stop every failure.
    pub fn clear(&self) {
        if let Ok(rd) = fs::read_dir(&self.ctl) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("hang-") || n.starts_with("fail-") || n.starts_with("slow-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Every runc call the wrapper has seen, in order: its subcommand and
    /// all its arguments (the global options, the subcommand's and the
    /// container id: `kill` has the signal after the id).
    pub fn calls(&self) -> Vec<(String, Vec<String>)> {
        fs::read_to_string(self.ctl.join("calls"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace().map(str::to_string);
                Some((words.next()?, words.collect()))
            })
            .collect()
    }

    /// The subcommands of the calls about container `id`, in order.
    pub fn calls_of(&self, id: &str) -> Vec<String> {
        let calls = self.calls();
        let of_id = calls
            .into_iter()
            .filter(|(_, args)| args.iter().any(|a| a == id));
        of_id.map(|(sub, _)| sub).collect()
    }

    /// (subcommand, container id) of every call that hung so far.
    pub fn hung(&self) -> Vec<(String, String)> {
        self.noted("hung")
    }

    /// (subcommand, container id) of every call that lingered (or lingers
    /// now) after runc was done.
    pub fn slowed(&self) -> Vec<(String, String)> {
        self.noted("slowed")
    }

    fn noted(&self, file: &str) -> Vec<(String, String)> {
        fs::read_to_string(self.ctl.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 2).then(|| (f[0].to_string(), f[1].to_string()))
            })
            .collect()
    }

    /// Wait until a `runc SUB ID` call hangs.
    pub fn wait_hung(&self, sub: &str, id: &str, timeout: Duration) -> Result<()> {
        self.wait_noted("hung", sub, id, timeout)
    }

    /// Wait until every `runc SUB ID` call that hung or lingered has
    /// returned (its wrapper process is gone).
    pub fn wait_returned(&self, sub: &str, id: &str, timeout: Duration) -> Result<()> {
        let noted = ["hung", "slowed"]
            .map(|f| fs::read_to_string(self.ctl.join(f)).unwrap_or_default())
            .join("");
        let pids: Vec<i32> = noted
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [s, i, pid, ..] if s == sub && i == id => pid.parse().ok(),
                _ => None,
            })
            .collect();
        let deadline = Instant::now() + timeout;
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            if Instant::now() > deadline {
                bail!("`runc {sub} {id}` still running after {timeout:?}: {pids:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Wait until a `runc SUB ID` call is done and lingers.
    pub fn wait_slowed(&self, sub: &str, id: &str, timeout: Duration) -> Result<()> {
        self.wait_noted("slowed", sub, id, timeout)
    }

    fn wait_noted(&self, file: &str, sub: &str, id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let noted = self.noted(file);
            if noted.iter().any(|(s, i)| s == sub && i == id) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no {file} `runc {sub} {id}` after {timeout:?}; {file}: {noted:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RuncWrapper {
    fn drop(&mut self) {
        self.clear();
    }
}

/// strace attached to one process (and its threads and children), delaying
/// each of its `umount2` calls. Dropping it detaches strace.
#[derive(Debug)]
pub struct UmountDelay {
    child: Option<Child>,
}

/// Thread ids of a process.
fn threads(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn tracer_of(tid: i32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

impl UmountDelay {
    /// Attach strace to `pid`; every `umount2` it (or a child) makes from now
    /// on enters the kernel `delay` late. Returns once every thread is traced.
    pub fn attach(pid: i32, delay: Duration) -> Result<Self> {
        let child = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=umount2"])
            .arg("-e")
            .arg(format!("inject=umount2:delay_enter={}", delay.as_micros()))
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn strace (apt-get install strace)")?;
        let me = UmountDelay { child: Some(child) };
        let spid = me.child.as_ref().map(|c| c.id() as i32).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tids = threads(pid);
            if !tids.is_empty() && tids.iter().all(|&t| tracer_of(t) == Some(spid)) {
                // Let strace finish setting its options on every thread.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("strace did not attach to every thread of {pid} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Detach now (the tracee keeps running).
    pub fn detach(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT makes strace detach cleanly.
            sys::kill(c.id() as i32, libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    sys::kill(c.id() as i32, libc::SIGKILL);
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for UmountDelay {
    fn drop(&mut self) {
        self.stop();
    }
}
