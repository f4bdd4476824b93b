//! Building blocks for the exiting-container scenarios of the demo and the
//! benchmarks: strace on a shim's `umount2` (timing it, or delaying it), a
//! kubelet-like loop (ListContainers back to back, UpdateContainerResources
//! every second), and readers of the shim's unmount log lines.

use std::collections::HashMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::cri::{Cri, LinuxContainerResources};
use crate::{sys, Containerd, BRISK_HANDLER};

/// Wall-clock time in ns since the epoch (the clock of CRI's timestamps).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Shim processes of `cd` serving `handler` pods.
pub fn handler_shims(cd: &Containerd, handler: &str) -> Vec<i32> {
    if handler == BRISK_HANDLER {
        cd.brisk_shim_pids()
    } else {
        cd.runc_shim_pids()
    }
}

/// The shim serving pod `pod_id` (started with `-id POD`), else the only
/// `handler` shim not in `before`.
pub fn shim_of_pod(cd: &Containerd, handler: &str, pod_id: &str, before: &[i32]) -> Result<i32> {
    let shims = handler_shims(cd, handler);
    for &p in &shims {
        let argv = sys::cmdline(p).unwrap_or_default();
        if argv.windows(2).any(|w| w[0] == "-id" && w[1] == pod_id) {
            return Ok(p);
        }
    }
    let new: Vec<i32> = shims.into_iter().filter(|p| !before.contains(p)).collect();
    match new.as_slice() {
        [p] => Ok(*p),
        _ => bail!("cannot tell the {handler} shim of pod {pod_id}: new shims {new:?}"),
    }
}

/// One `umount2` call seen by strace.
#[derive(Debug, Clone)]
pub struct Umount2Call {
    pub pid: i32,
    pub path: String,
    /// Entry, seconds since the epoch.
    pub start: f64,
    /// Time in the call (strace `-T`); None while unfinished.
    pub secs: Option<f64>,
    /// What follows `= `: `0`, `-1 EINVAL (Invalid argument)`, ...
    pub result: String,
}

impl Umount2Call {
    pub fn end(&self) -> Option<f64> {
        self.secs.map(|s| self.start + s)
    }
    /// The call found nothing (left) to unmount: EINVAL (not a mount
    /// point) or ENOENT (containerd's bundle cleanup got there first).
    pub fn nothing_mounted(&self) -> bool {
        self.result.contains("EINVAL") || self.result.contains("ENOENT")
    }
}

/// The umount2 calls of an strace log written with `-f -ttt -T`.
pub fn parse_umount2(text: &str) -> Vec<Umount2Call> {
    let mut calls: Vec<Umount2Call> = Vec::new();
    let mut pending: HashMap<i32, usize> = HashMap::new();
    for line in text.lines() {
        // strace pads short pids to a width with spaces.
        let Some((pid, after)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = after.trim_start().split_once(' ') else {
            continue;
        };
        let (Ok(pid), Ok(ts)) = (pid.parse::<i32>(), ts.parse::<f64>()) else {
            continue;
        };
        if let Some(args) = rest.strip_prefix("umount2(") {
            let path = args
                .strip_prefix('"')
                .and_then(|a| a.split('"').next())
                .unwrap_or("")
                .to_string();
            let mut call = Umount2Call {
                pid,
                path,
                start: ts,
                secs: None,
                result: String::new(),
            };
            if rest.ends_with("<unfinished ...>") {
                pending.insert(pid, calls.len());
            } else {
                fill_result(&mut call, rest);
            }
            calls.push(call);
        } else if rest.starts_with("<... umount2 resumed>") {
            if let Some(i) = pending.remove(&pid) {
                fill_result(&mut calls[i], rest);
            }
        }
    }
    calls
}

fn fill_result(call: &mut Umount2Call, rest: &str) {
    if let Some(eq) = rest.rfind(") = ") {
        let tail = &rest[eq + 4..];
        let (res, secs) = match tail.rfind(" <") {
            Some(lt) => (
                &tail[..lt],
                tail[lt + 2..].trim_end_matches('>').parse::<f64>().ok(),
            ),
            None => (tail, None),
        };
        call.result = res.trim().to_string();
        // A call that returned without -T timing still returned.
        call.secs = Some(secs.unwrap_or(0.0));
    }
}

/// The span of the unmount of one container's rootfs: from the first
/// umount2 of a path naming `id` to the end of the last one, once a call
/// has returned EINVAL or ENOENT (nothing mounted any more).
#[derive(Debug, Clone, Copy)]
pub struct UnmountSpan {
    pub start: f64,
    pub end: f64,
    pub calls: usize,
    /// The longest single call (s).
    pub longest: f64,
}

impl UnmountSpan {
    pub fn secs(&self) -> f64 {
        self.end - self.start
    }
}

pub fn unmount_span(calls: &[Umount2Call], id: &str) -> Option<UnmountSpan> {
    let mine: Vec<&Umount2Call> = calls
        .iter()
        .filter(|c| c.path.contains(id) && c.path.ends_with("/rootfs"))
        .collect();
    if !mine.iter().any(|c| c.nothing_mounted() && c.secs.is_some()) {
        return None;
    }
    let start = mine.iter().map(|c| c.start).fold(f64::INFINITY, f64::min);
    let end = mine
        .iter()
        .filter_map(|c| c.end())
        .fold(f64::NEG_INFINITY, f64::max);
    let longest = mine.iter().filter_map(|c| c.secs).fold(0.0, f64::max);
    Some(UnmountSpan {
        start,
        end,
        calls: mine.len(),
        longest,
    })
}

/// strace attached to a shim (and its threads and children), tracing only
/// `umount2`, optionally delaying each by `delay`. Detached on drop.
///
/// The children include runc, whose container setup unmounts the old root
/// after pivot_root: a container start on a delayed shim takes about two
/// delays longer. And ptrace stops every system call of the tracees, not
/// only the traced one, so each runc call on that shim runs slower.
pub struct Strace {
    child: Option<Child>,
    pub out: PathBuf,
}

impl Strace {
    pub fn attach(pid: i32, out: &Path, delay: Option<Duration>) -> Result<Self> {
        Self::attach_with(pid, out, delay, true)
    }

    /// As [`Strace::attach`], but runc and every other program the shim
    /// runs is let go at its execve (`-b execve`): only the shim's own
    /// umount2 calls are delayed, as a loaded disk delays the unmount of an
    /// overlay rootfs, while runc's detach of the old root after
    /// pivot_root (which syncs nothing) runs at its own pace.
    pub fn attach_shim_only(pid: i32, out: &Path, delay: Option<Duration>) -> Result<Self> {
        Self::attach_with(pid, out, delay, false)
    }

    fn attach_with(
        pid: i32,
        out: &Path,
        delay: Option<Duration>,
        follow_exec: bool,
    ) -> Result<Self> {
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-ttt", "-T", "-e", "trace=umount2"]);
        if !follow_exec {
            cmd.args(["-b", "execve"]);
        }
        if let Some(d) = delay {
            cmd.arg("-e")
                .arg(format!("inject=umount2:delay_enter={}", d.as_micros()));
        }
        cmd.arg("-o")
            .arg(out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // If we die without detaching, strace goes too (on SIGTERM it lets
        // its tracees go).
        // SAFETY: prctl in the forked child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("spawn strace (apt-get install strace)")?;
        let mut me = Strace {
            child: Some(child),
            out: out.to_path_buf(),
        };
        // strace needs a moment to attach to every thread.
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(Ok(Some(st))) = me.child.as_mut().map(|c| c.try_wait()) {
            bail!("strace -p {pid} exited at once: {st}");
        }
        Ok(me)
    }

    pub fn calls(&self) -> Vec<Umount2Call> {
        parse_umount2(&fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Wait until strace saw the unmount of `id`'s rootfs end.
    pub fn wait_unmount(&self, id: &str, timeout: Duration) -> Option<UnmountSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = unmount_span(&self.calls(), id) {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Detach (SIGINT lets strace resume the tracees), SIGKILL after 5 s.
    pub fn detach(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            if matches!(c.try_wait(), Ok(None)) {
                sys::kill(pid, libc::SIGINT);
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if matches!(c.try_wait(), Ok(None)) {
                    sys::kill(pid, libc::SIGKILL);
                }
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A brisk shim's "rootfs unmounted" / "slow rootfs unmount" log line.
#[derive(Debug, Clone)]
pub struct UnmountLog {
    pub took: Duration,
    pub slow: bool,
    pub line: String,
}

/// Parse a Go-style duration as the shim logs it (`1.5ms`, `4.2s`, `812µs`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim().trim_matches('"');
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "ns" => v / 1e9,
        "µs" | "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// The value of `key=` in a logfmt line.
pub fn logfmt_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()
    } else {
        rest.split(' ').next()
    }
}

/// The shim's unmount log line for the rootfs of container `id`, if the
/// containerd log (with the shims' logs in it) has one after byte `from`.
pub fn find_unmount_log(log: &Path, from: u64, id: &str) -> Option<UnmountLog> {
    let text = fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or(&[]));
    for line in text.lines() {
        let slow = line.contains("msg=\"slow rootfs unmount\"");
        let done = line.contains("msg=\"rootfs unmounted\"")
            || line.contains("msg=\"rootfs already unmounted\"");
        if !(slow || done) {
            continue;
        }
        let target = logfmt_value(line, "target").unwrap_or("");
        if !target.contains(id) {
            continue;
        }
        let took = logfmt_value(line, "took").and_then(parse_go_duration)?;
        return Some(UnmountLog {
            took,
            slow,
            line: line.to_string(),
        });
    }
    None
}

/// Lines of the containerd log after byte `from` that look like errors or
/// warnings of a brisk shim.
pub fn shim_problems(log: &Path, from: u64) -> Vec<String> {
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or(&[]));
    text.lines()
        .filter(|l| l.contains("runtime=io.containerd.brisk.v2"))
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .map(String::from)
        .collect()
}

/// Size of a file now (where to start reading new log lines).
pub fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// One ListContainers call: wall-clock start (ns) and latency.
#[derive(Debug, Clone, Copy)]
pub struct ListCall {
    pub start_ns: i64,
    pub took: Duration,
}

impl ListCall {
    pub fn end_ns(&self) -> i64 {
        self.start_ns + self.took.as_nanos() as i64
    }
}

/// ListContainers back to back until `stop`.
pub fn list_loop(cri: &Cri, stop: &AtomicBool) -> Vec<ListCall> {
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let start_ns = now_ns();
        let t = Instant::now();
        let _ = cri.list_containers(None);
        out.push(ListCall {
            start_ns,
            took: t.elapsed(),
        });
    }
    out
}

/// The longest ListContainers call that overlaps `[from_ns, to_ns]`.
pub fn list_max_between(calls: &[ListCall], from_ns: i64, to_ns: i64) -> Option<Duration> {
    calls
        .iter()
        .filter(|c| c.end_ns() >= from_ns && c.start_ns <= to_ns)
        .map(|c| c.took)
        .max()
}

/// What a kubelet-like update loop saw.
#[derive(Debug, Default, Clone)]
pub struct UpdateOutcome {
    pub calls: usize,
    pub failures: Vec<String>,
    pub longest: Duration,
}

/// UpdateContainerResources on `id` every second until `stop` or `exited`
/// (a kubelet stops updating a container once it saw it exit).
pub fn update_loop(cri: &Cri, id: &str, stop: &AtomicBool, exited: &AtomicBool) -> UpdateOutcome {
    let mut o = UpdateOutcome::default();
    while !stop.load(Ordering::SeqCst) && !exited.load(Ordering::SeqCst) {
        let r = LinuxContainerResources {
            cpu_shares: 512 + (o.calls % 2) as i64,
            ..Default::default()
        };
        let t = Instant::now();
        if let Err(e) = cri.update_container_resources(id, r) {
            o.failures.push(format!("{e:#}"));
        }
        o.longest = o.longest.max(t.elapsed());
        o.calls += 1;
        let next = Instant::now() + Duration::from_secs(1).saturating_sub(t.elapsed());
        while Instant::now() < next
            && !stop.load(Ordering::SeqCst)
            && !exited.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    o
}

/// Median and p-quantile helpers for small samples.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((s.len() - 1) as f64 * p).round() as usize;
    s[idx]
}

/// A duration as seconds with 2 decimals, or milliseconds below 1 s.
pub fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_umount2() {
        let t = "\
100 1700000000.100000 umount2(\"/s/k8s.io/abc/rootfs\", 0 <unfinished ...>
101 1700000000.200000 epoll_wait(4, [], 128, 0) = 0 <0.000010>
100 1700000004.100000 <... umount2 resumed>) = 0 <4.000000>
100 1700000004.100100 umount2(\"/s/k8s.io/abc/rootfs\", 0) = -1 EINVAL (Invalid argument) <0.000020>
102 1700000005.000000 umount2(\"/s/k8s.io/other/rootfs\", MNT_DETACH) = 0 (DELAYED) <10.000100>
";
        let calls = parse_umount2(t);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].secs, Some(4.0));
        assert_eq!(calls[0].result, "0");
        assert!(calls[1].nothing_mounted());
        assert_eq!(calls[2].result, "0 (DELAYED)");
        assert_eq!(calls[2].secs, Some(10.0001));
        let s = unmount_span(&calls, "abc").unwrap();
        assert_eq!(s.calls, 2);
        assert!((s.secs() - 4.00012).abs() < 1e-6, "{s:?}");
        assert!(unmount_span(&calls, "other").is_none(), "no EINVAL yet");
    }

    #[test]
    fn short_pids_padded_by_strace_are_read() {
        let t = "\
8474  1700000006.000000 umount2(\"/s/k8s.io/abc/rootfs\", 0) = 0 (DELAYED) <4.000100>
";
        let calls = parse_umount2(t);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!((calls[0].pid, calls[0].secs), (8474, Some(4.0001)));
    }

    #[test]
    fn parses_shim_log_line() {
        assert_eq!(
            parse_go_duration("1.5ms"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(parse_go_duration("4s"), Some(Duration::from_secs(4)));
        assert_eq!(parse_go_duration("812µs"), Some(Duration::from_micros(812)));
        let l = "time=\"2026-11-28T04:49:07Z\" level=warn msg=\"slow rootfs unmount\" target=/x/abc/rootfs took=4.2s runtime=io.containerd.brisk.v2";
        assert_eq!(logfmt_value(l, "target"), Some("/x/abc/rootfs"));
        assert_eq!(logfmt_value(l, "took"), Some("4.2s"));
        assert_eq!(logfmt_value(l, "msg"), Some("slow rootfs unmount"));
    }
}
