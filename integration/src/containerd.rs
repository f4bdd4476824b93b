//! A private containerd for one test: its own root, state, socket and config
//! in a temporary directory, with CRI handlers `runc` (stock shim) and `brisk`.
//! Dropping it tears down everything it created, even after a panic.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cri::{Cri, BUSYBOX_IMAGE, PAUSE_IMAGE};
use crate::ctr::Ctr;
use crate::sys;

/// CRI runtime handler names configured in every private containerd.
pub const RUNC_HANDLER: &str = "runc";
pub const BRISK_HANDLER: &str = "brisk";
pub const BRISK_RUNTIME_TYPE: &str = "io.containerd.brisk.v2";
pub const BRISK_SHIM_NAME: &str = "containerd-shim-brisk-v2";
/// Where the shims keep runc state, per namespace.
pub const RUNC_STATE_ROOTS: &[&str] = &["/run/containerd/runc", "/run/containerd/brisk"];
const TASK_PLUGIN_DIR: &str = "io.containerd.runtime.v2.task";
const DIR_PREFIX: &str = "brisk-it-";

/// Tests in one binary share host-wide places (/run/containerd/s, runc roots,
/// the cgroup roots); run one private containerd at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The directory cargo put this executable's sibling binaries in: the one
/// holding the running executable, or its parent for a test binary in
/// `deps/` or an example in `examples/`. It follows the profile and the build target (the workspace builds
/// for an explicit target, see `.cargo/config.toml`).
pub fn built_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// The brisk shim binary: `$BRISK_SHIM_BIN`, or the one built next to this
/// executable (`target/<host tuple>/release/containerd-shim-brisk-v2`).
pub fn brisk_shim_bin() -> PathBuf {
    match std::env::var_os("BRISK_SHIM_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => built_bin_dir().join(BRISK_SHIM_NAME),
    }
}

/// Where the image archives live: `$BRISK_IMAGES_DIR` or `<workspace>/target/images`.
pub fn images_dir() -> PathBuf {
    match std::env::var_os("BRISK_IMAGES_DIR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/images"),
    }
}

/// Build the image archives if they are missing; return (busybox.tar, pause.tar).
pub fn ensure_images() -> Result<(PathBuf, PathBuf)> {
    let dir = images_dir();
    let bb = dir.join("busybox.tar");
    let pause = dir.join("pause.tar");
    if !(bb.exists() && pause.exists()) {
        let script = workspace_root().join("scripts/build-images.sh");
        let out = sys::run_with_timeout(
            Command::new("bash").arg(&script).arg(&dir),
            Duration::from_secs(120),
        )?;
        if !out.status.success() {
            bail!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok((bb, pause))
}

/// Integration tests need root (mounts, cgroups). Returns false, after saying
/// why, when they cannot run here.
pub fn integration_enabled() -> bool {
    if std::env::var_os("BRISK_SKIP_INTEGRATION").is_some() {
        eprintln!("BRISK_SKIP_INTEGRATION set: skipping");
        return false;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("integration tests need root: skipping");
        return false;
    }
    true
}

/// Panic unless the brisk shim binary exists.
pub fn require_brisk() {
    let p = brisk_shim_bin();
    assert!(
        p.is_file(),
        "brisk shim binary {} is missing: run `cargo build --release -p brisk-shim` or set BRISK_SHIM_BIN",
        p.display()
    );
}

/// Who manages the cgroups of the test pods, as kubelet's `cgroupDriver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    /// runc writes the cgroup tree itself (pods below `/<tag>`).
    Cgroupfs,
    /// runc asks systemd for a scope per container (`SystemdCgroup = true`,
    /// brisk's `systemd_cgroup = true`); pods go in the slice
    /// `brisk_it_<pid>_<n>.slice`.
    Systemd,
}

/// The driver of this run: `$BRISK_CGROUP_DRIVER` (`systemd` or
/// `cgroupfs`), else systemd where production nodes use it: cgroup v2 at
/// `/sys/fs/cgroup` and systemd as init. Panics on any other value.
pub fn cgroup_driver() -> CgroupDriver {
    match std::env::var("BRISK_CGROUP_DRIVER").ok().as_deref() {
        Some("systemd") => CgroupDriver::Systemd,
        Some("cgroupfs") => CgroupDriver::Cgroupfs,
        Some("") | None => {
            if sys::cgroup_v2_unified() && sys::systemd_booted() {
                CgroupDriver::Systemd
            } else {
                CgroupDriver::Cgroupfs
            }
        }
        Some(other) => {
            panic!("BRISK_CGROUP_DRIVER={other:?}: expected \"systemd\" or \"cgroupfs\"")
        }
    }
}

/// The systemd slice of the instance `tag` (`brisk-it-<pid>-<n>`): dashes
/// would nest it (`a-b.slice` is a child of `a.slice`), so they become
/// underscores.
pub fn slice_of(tag: &str) -> String {
    format!("{}.slice", tag.replace('-', "_"))
}

/// The systemd scope runc creates for container `id` under CRI
/// (containerd's CRI cgroup prefix is `cri-containerd`).
pub fn cri_scope_of(id: &str) -> String {
    format!("cri-containerd-{id}.scope")
}

/// A brisk.toml `body` with `systemd_cgroup = true` in front, unless it
/// sets the key itself (top-level keys come before any table).
pub fn with_systemd_cgroup(body: &str) -> String {
    if sets_key(body, "systemd_cgroup") {
        body.to_string()
    } else {
        format!("systemd_cgroup = true\n{body}")
    }
}

/// Whether a brisk.toml `body` sets the top-level `key` itself.
fn sets_key(body: &str, key: &str) -> bool {
    body.lines().any(|l| l.trim_start().starts_with(key))
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `options = { ConfigPath = ... }` for the brisk runtime.
    pub brisk_config: Option<PathBuf>,
    /// A brisk config file to write into the instance directory (as
    /// `brisk.toml`, with `{dir}` replaced by that directory) and pass by
    /// `ConfigPath`. Takes precedence over `brisk_config`.
    pub brisk_config_toml: Option<String>,
    /// containerd (and so shim) debug logging; also on with `BRISK_CONTAINERD_DEBUG`.
    pub debug: bool,
    /// The containerd binary; default `$BRISK_CONTAINERD_BIN` (or
    /// `$BRISK_CONTAINERD`), else `/usr/bin/containerd`. Its directory, which
    /// holds the `ctr` and `containerd-shim-runc-v2` of the same release,
    /// goes on containerd's PATH right after the brisk shim's, and its `ctr`
    /// drives it. containerd 2.x gets a config of version 3.
    pub containerd_bin: Option<PathBuf>,
    /// The runc both shims run; default `$BRISK_RUNC_BIN`, else `runc` on
    /// PATH. Linked as `runc` into the directory at the front of
    /// containerd's PATH (the shims inherit containerd's PATH).
    pub runc_bin: Option<PathBuf>,
    /// A node before brisk: no `brisk` handler in the config and no brisk
    /// shim in [`Containerd::bin_dir`], for tests that install it themselves
    /// (brisk-ctl).
    pub without_brisk: bool,
    /// The cgroup driver; default [`cgroup_driver`].
    pub cgroup_driver: Option<CgroupDriver>,
    /// More environment for containerd (and so its shims), e.g. the
    /// `OTEL_*` variables that turn on its tracing plugin.
    pub env: Vec<(String, String)>,
    /// containerd's root on a tmpfs of this many MiB, so a test can fill
    /// it up (the chaos soak's full disk) without touching the host's.
    pub root_tmpfs_mib: Option<u64>,
}

impl Options {
    /// [`Options::cgroup_driver`], else this run's [`cgroup_driver`].
    pub fn driver(&self) -> CgroupDriver {
        self.cgroup_driver.unwrap_or_else(cgroup_driver)
    }

    /// The brisk.toml to write into the instance directory: the test's
    /// own, with `systemd_cgroup = true` under the systemd driver (brisk's
    /// runtime type receives no runc options, so that is how it learns
    /// it); under systemd one is written even when the test has none.
    ///
    /// The run's [`oci_runtime`] goes in the same way, and likewise makes a
    /// brisk.toml where the test has none.
    pub fn effective_brisk_toml(&self) -> Option<String> {
        let own = match (&self.brisk_config_toml, &self.brisk_config) {
            (Some(b), _) => Some(b.clone()),
            (None, None) if self.driver() == CgroupDriver::Systemd || oci_runtime().is_some() => {
                Some(String::new())
            }
            (None, _) => None,
        }?;
        let own = with_oci_runtime(&own);
        Some(match self.driver() {
            CgroupDriver::Systemd => with_systemd_cgroup(&own),
            CgroupDriver::Cgroupfs => own,
        })
    }
}

/// `SystemdCgroup` of the runc handler.
fn systemd_cgroup_value(opts: &Options) -> bool {
    opts.driver() == CgroupDriver::Systemd
}

pub struct Containerd {
    /// Unique name: also the cgroup parent (`/<tag>`) and the ctr namespace.
    pub tag: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub brisk_bin: PathBuf,
    /// The containerd binary run, and its (major, minor, patch).
    pub containerd_bin: PathBuf,
    pub containerd_version: (u32, u32, u32),
    /// The `ctr` of the same release.
    pub ctr_bin: PathBuf,
    /// Who manages the pods' cgroups ([`cgroup_driver`] at start).
    pub cgroup_driver: CgroupDriver,
    /// How long a (re)start waits for CRI to answer. CRI answers only once
    /// its recovery is done, which waits on every shim's State and Delete:
    /// behind stock shims with slow unmounts, a restart takes minutes.
    pub cri_ready_within: Duration,
    /// [`Options::env`], given again at every (re)start.
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// The datagram socket containerd gets as `NOTIFY_SOCKET`, as systemd
    /// gives it to a `Type=notify` service. containerd passes its
    /// environment to every shim, so each test sees what a node whose
    /// containerd runs under systemd sees.
    notify: Option<std::os::unix::net::UnixDatagram>,
    cri: Option<Cri>,
    sockets: Mutex<BTreeSet<PathBuf>>,
    ids: Mutex<BTreeSet<(String, String)>>,
    ctr_images: Mutex<bool>,
    /// containerd's root is a tmpfs of ours ([`Options::root_tmpfs_mib`]).
    root_tmpfs: bool,
    torn_down: bool,
    _serial: MutexGuard<'static, ()>,
}

fn containerd_bin() -> PathBuf {
    for var in ["BRISK_CONTAINERD_BIN", "BRISK_CONTAINERD"] {
        match std::env::var_os(var) {
            Some(p) if !p.is_empty() => return PathBuf::from(p),
            _ => {}
        }
    }
    let usr = Path::new("/usr/bin/containerd");
    if usr.exists() {
        usr.to_path_buf()
    } else {
        PathBuf::from("containerd")
    }
}

/// The containerd binary of `opts`: [`Options::containerd_bin`], else the
/// environment's, else Debian's.
pub fn selected_containerd_bin(opts: &Options) -> PathBuf {
    opts.containerd_bin.clone().unwrap_or_else(containerd_bin)
}

/// The runc binary of `opts`: [`Options::runc_bin`], else `$BRISK_RUNC_BIN`,
/// else the [`oci_runtime`] of the run found on PATH; None means `runc` on
/// PATH.
pub fn selected_runc_bin(opts: &Options) -> Option<PathBuf> {
    opts.runc_bin
        .clone()
        .or_else(|| match std::env::var_os("BRISK_RUNC_BIN") {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => None,
        })
        .or_else(|| oci_runtime().map(|r| sys::which(&r).unwrap_or_else(|| PathBuf::from(r))))
}

/// The OCI runtime of this run other than runc: `$BRISK_OCI_RUNTIME` (a
/// name on PATH or a path, e.g. `crun`). With it, brisk is configured the
/// way an operator does it, `runc_binary = "<it>"` in every brisk.toml a
/// test does not give its own `runc_binary`; and since the stock shim and
/// a `ctr run` without a brisk.toml call `runc`, the runtime is also linked
/// as `runc` at the front of containerd's PATH, so a whole group runs on it.
pub fn oci_runtime() -> Option<String> {
    match std::env::var("BRISK_OCI_RUNTIME") {
        Ok(r) if !r.is_empty() && r != "runc" => Some(r),
        _ => None,
    }
}

/// `body` with `runc_binary = "<runtime>"` in front for the run's
/// [`oci_runtime`], unless it names a runc itself (a fault wrapper runs the
/// runtime by the `runc` link).
pub fn with_oci_runtime(body: &str) -> String {
    match oci_runtime() {
        Some(r) if !sets_key(body, "runc_binary") => {
            format!("runc_binary = {}\n{body}", toml_str(&r))
        }
        _ => body.to_string(),
    }
}

/// The `ctr` released with `containerd`: the one next to it, else `ctr` on PATH.
pub fn ctr_next_to(containerd: &Path) -> PathBuf {
    containerd
        .parent()
        .map(|d| d.join("ctr"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ctr"))
}

/// (major, minor, patch) from `containerd --version`, e.g.
/// `containerd github.com/containerd/containerd/v2 2.1.9+unknown` or
/// `containerd containerd.io 1.6.20~ds1 1.6.20~ds1-1+b1`.
pub fn containerd_version(bin: &Path) -> Result<(u32, u32, u32)> {
    let out = sys::run_with_timeout(Command::new(bin).arg("--version"), Duration::from_secs(20))
        .with_context(|| format!("{} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_containerd_version(&text)
        .with_context(|| format!("no version in `{} --version`: {text:?}", bin.display()))
}

/// The first `X.Y.Z` (optionally `vX.Y.Z`) word after the program name.
pub fn parse_containerd_version(text: &str) -> Option<(u32, u32, u32)> {
    text.split_whitespace().skip(1).find_map(|w| {
        let w = w.strip_prefix('v').unwrap_or(w);
        let mut it = w.splitn(3, '.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let rest = it.next()?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        Some((major, minor, digits.parse().ok()?))
    })
}

/// The config of a private containerd of release `major`: version 3 for
/// containerd 2.x ([`config_toml_v3`]), version 2 before ([`config_toml`]).
pub fn config_toml_for(dir: &Path, opts: &Options, major: u32) -> String {
    if major >= 2 {
        config_toml_v3(dir, opts)
    } else {
        config_toml(dir, opts)
    }
}

/// [`config_toml`] in config version 3, for containerd 2.x: the same
/// settings, where 2.x keeps them (CRI is split into
/// `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`; the
/// sandbox image is a pinned image). Keep the two in step. NRI, on by
/// default in 2.x with a host-wide socket, is off, and the `opt` plugin
/// lives in the instance directory.
pub fn config_toml_v3(dir: &Path, opts: &Options) -> String {
    let d = |p: &str| toml_str(&dir.join(p).to_string_lossy());
    let images = "plugins.\"io.containerd.cri.v1.images\"";
    let rt = "plugins.\"io.containerd.cri.v1.runtime\"";
    let mut s = config_head(3, dir, opts);
    let _ = write!(
        s,
        r#"
[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[{images}]
  snapshotter = "overlayfs"
  stats_collect_period = 1

[{images}.pinned_images]
  sandbox = "{PAUSE_IMAGE}"

[{rt}]
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false

[{rt}.cni]
  bin_dirs = [{cni_bin}]
  conf_dir = {cni_conf}

[{rt}.containerd]
  default_runtime_name = "{RUNC_HANDLER}"

[{rt}.containerd.runtimes.{RUNC_HANDLER}]
  runtime_type = "io.containerd.runc.v2"

[{rt}.containerd.runtimes.{RUNC_HANDLER}.options]
  SystemdCgroup = {systemd}
"#,
        systemd = systemd_cgroup_value(opts),
        opt = d("opt"),
        cni_bin = d("cni/bin"),
        cni_conf = d("cni/conf"),
    );
    push_brisk_runtime(&mut s, rt, dir, opts);
    s
}

/// The start of a private containerd's config, in both versions: its root,
/// state and sockets in `dir`, the log level, no metrics.
fn config_head(version: u32, dir: &Path, opts: &Options) -> String {
    let d = |p: &str| toml_str(&dir.join(p).to_string_lossy());
    let level = if opts.debug
        || std::env::var_os("BRISK_CONTAINERD_DEBUG").is_some_and(|v| !v.is_empty())
    {
        "debug"
    } else {
        "info"
    };
    format!(
        r#"version = {version}
root = {root}
state = {state}
oom_score = 0

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[debug]
  level = "{level}"

[metrics]
  address = ""
"#,
        root = d("root"),
        state = d("state"),
        sock = d("containerd.sock"),
        ttrpc = d("containerd.sock.ttrpc"),
    )
}

/// The `brisk` runtime below the CRI plugin table `cri` (unless
/// [`Options::without_brisk`]), with its `ConfigPath` when `opts` has a
/// brisk config.
fn push_brisk_runtime(s: &mut String, cri: &str, dir: &Path, opts: &Options) {
    if opts.without_brisk {
        return;
    }
    let _ = write!(
        s,
        "\n[{cri}.containerd.runtimes.{BRISK_HANDLER}]\n  runtime_type = \"{BRISK_RUNTIME_TYPE}\"\n"
    );
    let written = opts.effective_brisk_toml().map(|_| dir.join("brisk.toml"));
    if let Some(cfg) = written.as_ref().or(opts.brisk_config.as_ref()) {
        let _ = write!(
            s,
            "\n[{cri}.containerd.runtimes.{BRISK_HANDLER}.options]\n  ConfigPath = {}\n",
            toml_str(&cfg.to_string_lossy())
        );
    }
}

fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The config.toml of a private containerd rooted at `dir`.
pub fn config_toml(dir: &Path, opts: &Options) -> String {
    let d = |p: &str| toml_str(&dir.join(p).to_string_lossy());
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    let mut s = config_head(2, dir, opts);
    let _ = write!(
        s,
        r#"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stats_collect_period = 1

[{cri}.cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "{RUNC_HANDLER}"

[{cri}.containerd.runtimes.{RUNC_HANDLER}]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.{RUNC_HANDLER}.options]
  SystemdCgroup = {systemd}
"#,
        systemd = systemd_cgroup_value(opts),
        cni_bin = d("cni/bin"),
        cni_conf = d("cni/conf"),
    );
    push_brisk_runtime(&mut s, cri, dir, opts);
    s
}

impl Containerd {
    pub fn start() -> Result<Self> {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Result<Self> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        sweep_stale();
        let (bb_tar, pause_tar) = ensure_images()?;

        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Before the instance directory exists: a missing containerd leaves nothing.
        let containerd_bin = selected_containerd_bin(&opts);
        let containerd_version = containerd_version(&containerd_bin)?;
        let tag = format!("{DIR_PREFIX}{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        if dir.exists() {
            cleanup_instance(&dir, &tag, &BTreeSet::new(), &BTreeSet::new());
        }
        fs::create_dir_all(dir.join("bin"))?;
        for sub in ["root", "state", "cni/bin", "cni/conf", "pod-logs"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let brisk_bin = brisk_shim_bin();
        if !opts.without_brisk {
            std::os::unix::fs::symlink(&brisk_bin, dir.join("bin").join(BRISK_SHIM_NAME))?;
        }
        if let Some(body) = &opts.effective_brisk_toml() {
            fs::write(
                dir.join("brisk.toml"),
                body.replace("{dir}", &dir.to_string_lossy()),
            )?;
        }
        if let Some(runc) = selected_runc_bin(&opts) {
            std::os::unix::fs::symlink(&runc, dir.join("bin").join("runc"))?;
        }
        let config = dir.join("config.toml");
        fs::write(&config, config_toml_for(&dir, &opts, containerd_version.0))?;
        let socket = dir.join("containerd.sock");
        let log_path = dir.join("containerd.log");

        let mut me = Containerd {
            tag,
            dir: dir.clone(),
            socket,
            log_path: log_path.clone(),
            brisk_bin,
            ctr_bin: ctr_next_to(&containerd_bin),
            containerd_bin,
            containerd_version,
            cgroup_driver: opts.driver(),
            cri_ready_within: Duration::from_secs(30),
            env: opts.env.clone(),
            child: None,
            notify: None,
            cri: None,
            sockets: Mutex::new(BTreeSet::new()),
            ids: Mutex::new(BTreeSet::new()),
            ctr_images: Mutex::new(false),
            root_tmpfs: opts.root_tmpfs_mib.is_some(),
            torn_down: false,
            _serial: serial,
        };

        if let Some(mib) = opts.root_tmpfs_mib {
            // After `me` exists, so that its teardown unmounts it.
            sys::mount_tmpfs(&me.dir.join("root"), mib)
                .context("mount a tmpfs as containerd's root")?;
        }
        fs::File::create(&log_path)?;
        me.launch()?;
        let k8s = me.ctr_in("k8s.io");
        k8s.import(&bb_tar)?;
        k8s.import(&pause_tar)?;
        me.cri()
            .wait_images(&[BUSYBOX_IMAGE, PAUSE_IMAGE], Duration::from_secs(30))?;
        Ok(me)
    }

    /// Spawn containerd with our config (appending to its log), wait for
    /// its socket and for CRI to answer, and connect a CRI client. The CRI
    /// client's record of created pods and containers carries over.
    fn launch(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let inherited = std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        // The shims of containerd's own release come next, unless already there.
        let release = match self.containerd_bin.parent() {
            Some(d)
                if !d.as_os_str().is_empty()
                    && !inherited.split(':').any(|p| Path::new(p) == d) =>
            {
                format!("{}:", d.display())
            }
            _ => String::new(),
        };
        let path = format!("{}:{release}{inherited}", self.dir.join("bin").display());
        // A socket file left by an earlier run would pass for readiness.
        let _ = fs::remove_file(&self.socket);
        let notify = self.notify_socket()?;
        let mut cmd = Command::new(&self.containerd_bin);
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .env("NOTIFY_SOCKET", &notify)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&self.dir);
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
        self.child = Some(cmd.spawn().context("spawn containerd")?);
        let (socket, log_path) = (self.socket.clone(), self.log_path.clone());

        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "containerd exited at startup ({st}):\n{}",
                    sys::tail_file(&log_path, 40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd socket did not appear:\n{}",
                    sys::tail_file(&log_path, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cri = Cri::connect(&socket, &self.cgroup_parent(), &self.dir.join("pod-logs"))?;
        let deadline = Instant::now() + self.cri_ready_within;
        loop {
            match cri.version() {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(
                        e.context(format!("CRI not ready:\n{}", sys::tail_file(&log_path, 40)))
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.wait_notified_ready(Duration::from_secs(30))?;
        let mut cri = cri;
        if let Some(old) = self.cri.take() {
            cri.adopt_tracked(&old);
        }
        self.cri = Some(cri);
        Ok(())
    }

    /// The path of the notify socket, bound on first use and kept across
    /// restarts (systemd keeps its own too).
    fn notify_socket(&mut self) -> Result<PathBuf> {
        let path = self.dir.join("notify.sock");
        if self.notify.is_none() {
            let _ = fs::remove_file(&path);
            let sock = std::os::unix::net::UnixDatagram::bind(&path)
                .with_context(|| format!("bind {}", path.display()))?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            self.notify = Some(sock);
        }
        Ok(path)
    }

    /// Wait for containerd's `READY=1` on the notify socket: proof that it
    /// runs with `NOTIFY_SOCKET` as under systemd (and so do its shims).
    fn wait_notified_ready(&self, timeout: Duration) -> Result<()> {
        let Some(sock) = &self.notify else {
            bail!("no notify socket");
        };
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n)
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1") =>
                {
                    return Ok(())
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("read the notify socket"),
            }
        }
        bail!(
            "containerd sent no READY=1 to NOTIFY_SOCKET within {timeout:?}:\n{}",
            sys::tail_file(&self.log_path, 40)
        )
    }

    /// Stop containerd (SIGTERM to its pid, SIGKILL after 10 s) and leave its
    /// shims, root and state alone, as a node's containerd restart does.
    /// [`Containerd::start_again`] brings it back.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("containerd is not running");
        };
        terminate(&mut child);
        Ok(())
    }

    /// SIGKILL containerd, as the OOM killer or a crash ends it: no
    /// shutdown of its own. Its shims, root and state stay.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("containerd is not running");
        };
        let _ = child.kill();
        child.wait().context("wait for the killed containerd")?;
        Ok(())
    }

    /// Whether containerd runs now (false between a stop and the next start).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Start containerd again after [`Containerd::stop`], with the same root,
    /// state, socket and config.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("containerd is still running");
        }
        self.launch()
    }

    /// Restart containerd: [`Containerd::stop`], then [`Containerd::start_again`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// containerd's config file (tests may edit it, then [`Containerd::restart`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The directory at the front of containerd's (and so the shims') PATH.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// A shell command that restarts this containerd, for a tool under test
    /// that restarts containerd itself (`brisk-ctl --restart-cmd`). Run the
    /// tool with [`Containerd::run_serving_restarts`]: the command asks it,
    /// through files in the instance directory, to restart containerd, and
    /// waits for the answer. The harness thus keeps owning the containerd
    /// process across restarts: its PDEATHSIG, its CRI client and its
    /// teardown work as with [`Containerd::restart`], even after a panic.
    pub fn restart_hook(&self) -> Result<String> {
        let script = self.dir.join("restart-hook.sh");
        let body = RESTART_HOOK.replace("{dir}", &sh_quote(&self.dir.to_string_lossy()));
        fs::write(&script, body)?;
        Ok(format!("sh {}", sh_quote(&script.to_string_lossy())))
    }

    /// Run `cmd` to completion (at most `timeout`), restarting containerd
    /// whenever it runs the [`Containerd::restart_hook`] command. Returns its
    /// output and how many restarts it asked for.
    pub fn run_serving_restarts(
        &mut self,
        cmd: &mut Command,
        timeout: Duration,
    ) -> Result<(Output, usize)> {
        let _ = fs::remove_file(self.dir.join(RESTART_REQUEST));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let stdout = sys::read_in_background(child.stdout.take());
        let stderr = sys::read_in_background(child.stderr.take());
        let deadline = Instant::now() + timeout;
        let mut restarts = 0;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            let served = self.serve_restart_request().map(|served| {
                restarts += usize::from(served);
            });
            let failed = match served {
                Err(e) => Some(e),
                Ok(()) if Instant::now() > deadline => {
                    Some(anyhow!("{cmd:?} did not finish within {timeout:?}"))
                }
                Ok(()) => None,
            };
            if let Some(e) = failed {
                sys::kill(child.id() as i32, libc::SIGKILL);
                let _ = child.wait();
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        Ok((output, restarts))
    }

    /// Serve [`Containerd::restart_hook`] requests from something the test
    /// does not run itself (a pod whose container runs the hook, through a
    /// mount of the instance directory), until `done` holds (checked every
    /// 100 ms; errors of `done`, e.g. CRI while containerd restarts, count
    /// as "not yet") or `timeout` passes. Returns the restarts served.
    pub fn serve_restarts_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Containerd) -> Result<bool>,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut restarts = 0;
        let mut last_check = Instant::now() - Duration::from_secs(1);
        loop {
            restarts += usize::from(self.serve_restart_request()?);
            if last_check.elapsed() >= Duration::from_millis(100) {
                last_check = Instant::now();
                if let Ok(true) = done(self) {
                    return Ok(restarts);
                }
            }
            if Instant::now() > deadline {
                bail!("not done within {timeout:?} ({restarts} restarts served)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// If the [`Containerd::restart_hook`] asked for a restart, restart
    /// containerd and answer it; whether it had asked.
    fn serve_restart_request(&mut self) -> Result<bool> {
        if fs::remove_file(self.dir.join(RESTART_REQUEST)).is_err() {
            return Ok(false);
        }
        self.answer_restart(&self.dir.join(RESTART_ANSWER))?;
        Ok(true)
    }

    /// Restart containerd for the hook and write the hook's answer (`ok` or
    /// the error) to `answer`, atomically.
    fn answer_restart(&mut self, answer: &Path) -> Result<()> {
        let reply = match self.restart_for_hook() {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let tmp = answer.with_extension("tmp");
        fs::write(&tmp, reply)?;
        fs::rename(&tmp, answer)?;
        Ok(())
    }

    /// [`Containerd::restart`], also when an earlier start failed (a config
    /// that containerd rejected leaves no running child).
    fn restart_for_hook(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.start_again()
    }

    /// Remember a shim socket (e.g. of a shim a test started itself) for
    /// the leak checks and the teardown.
    pub fn track_socket(&self, path: &Path) {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf());
    }

    pub fn address(&self) -> String {
        self.socket.to_string_lossy().into_owned()
    }

    /// The cgroup parent of our pods: `/<tag>` (cgroupfs), or the slice
    /// `brisk_it_<pid>_<n>.slice` (systemd).
    pub fn cgroup_parent(&self) -> String {
        match self.cgroup_driver {
            CgroupDriver::Cgroupfs => format!("/{}", self.tag),
            CgroupDriver::Systemd => slice_of(&self.tag),
        }
    }

    /// The cgroup directories of the pods' parent that exist now, in every
    /// hierarchy (one on cgroup v2).
    pub fn cgroup_parent_dirs(&self) -> Vec<PathBuf> {
        parent_cgroup_dirs(&self.tag)
    }

    /// The cgroup directories of a CRI container or pod sandbox `id` (or a
    /// ctr-run container, which [`Containerd::ctr_cgroup`] puts below
    /// `/<tag>` with either driver) that exist now.
    pub fn container_cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let mut out = sys::cgroup_dirs(&format!("/{}/{id}", self.tag));
        if self.cgroup_driver == CgroupDriver::Systemd {
            out.extend(sys::cgroup_dirs(&format!(
                "{}/{}",
                slice_of(&self.tag),
                cri_scope_of(id)
            )));
        }
        out
    }

    /// `file` in the cgroup of container `id`, in the hierarchy that has it.
    /// crun under the systemd driver runs the container one level down, in
    /// `<scope>/container` (the scope is delegated to it), and writes the
    /// limits and the freezer there: that cgroup comes first where it exists.
    pub fn cgroup_file(&self, id: &str, file: &str) -> Option<PathBuf> {
        self.container_cgroup_dirs(id)
            .into_iter()
            .flat_map(|d| [d.join("container"), d])
            .map(|d| d.join(file))
            .find(|p| p.exists())
    }

    pub fn cri(&self) -> &Cri {
        self.cri.as_ref().expect("CRI client")
    }

    /// ctr in namespace `ns`.
    pub fn ctr_in(&self, ns: &str) -> Ctr {
        let mut c = Ctr::new(&self.address(), ns);
        c.bin = self.ctr_bin.clone();
        c
    }

    /// ctr in our own namespace (named like the tag), with the images imported.
    pub fn ctr(&self) -> Result<Ctr> {
        let c = self.ctr_in(&self.tag);
        let mut done = self.ctr_images.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            let (bb, pause) = ensure_images()?;
            c.import(&bb)?;
            c.import(&pause)?;
            *done = true;
        }
        Ok(c)
    }

    /// The cgroup path to give a ctr-run container: `/<tag>/<id>`.
    pub fn ctr_cgroup(&self, id: &str) -> String {
        self.track_id(&self.tag.clone(), id);
        format!("/{}/{}", self.tag, id)
    }

    /// Remember a (namespace, id) for the runc-state leak check.
    pub fn track_id(&self, ns: &str, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_string(), id.to_string()));
    }

    pub fn containerd_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Long-running shim processes of this containerd (any runtime).
    pub fn shim_pids(&self) -> Vec<i32> {
        let pids = sys::shim_daemons(&self.address());
        self.record_sockets_of(&pids);
        pids
    }

    /// Shim processes of this containerd whose executable is the brisk binary.
    pub fn brisk_shim_pids(&self) -> Vec<i32> {
        let want = fs::canonicalize(&self.brisk_bin).unwrap_or_else(|_| self.brisk_bin.clone());
        self.shim_pids()
            .into_iter()
            .filter(|&p| sys::exe(p).map(|e| e == want).unwrap_or(false))
            .collect()
    }

    /// Shim processes whose executable is the stock runc v2 shim.
    pub fn runc_shim_pids(&self) -> Vec<i32> {
        self.shim_pids()
            .into_iter()
            .filter(|&p| {
                sys::exe(p)
                    .map(|e| {
                        e.file_name()
                            .map(|n| n == "containerd-shim-runc-v2")
                            .unwrap_or(false)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    fn record_sockets_of(&self, pids: &[i32]) {
        let mut socks = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        for &p in pids {
            for s in sys::unix_sockets_of(p) {
                if !s.starts_with(&self.dir) {
                    socks.insert(s);
                }
            }
        }
    }

    /// Note the shim sockets in use now (from live shims and from the
    /// `address` files in the bundles).
    pub fn refresh_sockets(&self) {
        let _ = self.shim_pids();
        let mut socks = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        socks.extend(bundle_socket_addresses(&self.dir));
        drop(socks);
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.extend(bundle_ids(&self.dir));
        if let Some(c) = &self.cri {
            let t = c.tracked();
            let t = t.lock().unwrap_or_else(|e| e.into_inner());
            for id in t.pods.iter().chain(t.containers.iter()) {
                ids.insert(("k8s.io".to_string(), id.clone()));
            }
        }
    }

    pub fn known_sockets(&self) -> BTreeSet<PathBuf> {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything this containerd's pods and shims should have removed and
    /// that is still there.
    pub fn leaks(&self) -> Vec<String> {
        self.refresh_sockets();
        let mut out = Vec::new();
        let address = self.address();
        for pid in sys::processes_with_address(&address) {
            out.push(format!(
                "shim process {pid} still running: {:?}",
                sys::cmdline(pid).unwrap_or_default()
            ));
        }
        let root = self.dir.join("root");
        let state = self.dir.join("state");
        for m in sys::mounts() {
            if self.root_tmpfs && m.mount_point == root {
                continue;
            }
            if m.mount_point.starts_with(&root) || m.mount_point.starts_with(&state) {
                out.push(format!(
                    "mount left: {} ({})",
                    m.mount_point.display(),
                    m.fs_type
                ));
            }
        }
        for s in self.known_sockets() {
            if s.exists() {
                out.push(format!("shim socket left: {}", s.display()));
            }
        }
        for d in self.cgroup_parent_dirs() {
            for c in sys::cgroup_children(&d) {
                out.push(format!("cgroup left: {}", c.display()));
            }
        }
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if sys::systemd_booted() {
            out.extend(
                our_units(&self.tag, &ids, false)
                    .into_iter()
                    .map(|u| format!("systemd unit left: {} ({}/{})", u.name, u.active, u.sub)),
            );
        }
        for (ns, id) in ids.iter() {
            for r in RUNC_STATE_ROOTS {
                let p = Path::new(r).join(ns).join(id);
                if p.exists() {
                    out.push(format!("runc state left: {}", p.display()));
                }
            }
            let b = self
                .dir
                .join("state")
                .join(TASK_PLUGIN_DIR)
                .join(ns)
                .join(id);
            if b.exists() {
                out.push(format!("bundle left: {}", b.display()));
            }
        }
        out
    }

    /// Wait (up to 15 s) for `leaks()` to be empty; panic otherwise with the
    /// list, the lines of containerd's log that name each leaked container
    /// and its cleanup warnings (a CI log keeps the start of a failure's
    /// message), and the log's tail.
    pub fn assert_no_leaks(&self) {
        if let Err(e) = self.wait_no_leaks(Duration::from_secs(15)) {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            let evidence = crate::report::leak_evidence(&[format!("{e:#}")], &log, "");
            panic!(
                "{e:#}\n{}\n--- containerd log tail ---\n{}",
                evidence.join("\n"),
                sys::tail_file(&self.log_path, 60)
            );
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        sys::tail_file(&self.log_path, n)
    }

    /// Remove pods and ctr containers, stop containerd, then remove whatever
    /// is left: shims, processes in our cgroups, mounts, sockets, cgroups, runc
    /// state, the temporary directory. Returns the problems met.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        self.refresh_sockets();
        let alive = self
            .child
            .as_mut()
            .map(|c| matches!(c.try_wait(), Ok(None)))
            .unwrap_or(false);
        if alive {
            if let Some(cri) = self.cri.as_mut() {
                // Do not hang for minutes on a wedged runtime.
                cri.timeout = Duration::from_secs(20);
                let mut e = cri.remove_all_pods();
                errors.append(&mut e);
            }
            if *self.ctr_images.lock().unwrap_or_else(|e| e.into_inner()) {
                errors.extend(self.ctr_in(&self.tag).remove_everything());
            }
        }
        self.refresh_sockets();
        self.cri = None;
        if let Some(mut child) = self.child.take() {
            if !terminate(&mut child) {
                errors.push("containerd ignored SIGTERM for 10 s; SIGKILL".into());
            }
        }
        if self.root_tmpfs {
            // Ours, not a leak; what is still mounted below it is one, and
            // keeps it busy for the cleanup below to report.
            let _ = sys::umount(&self.dir.join("root"));
        }
        let sockets = self.known_sockets();
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (_, leftovers) = cleanup_instance_report(&self.dir, &self.tag, &sockets, &ids);
        errors.extend(leftovers);
        errors
    }

    /// Tear down and check that nothing is left; panic otherwise.
    pub fn finish(self) {
        if let Err(e) = self.finish_checked() {
            panic!("{e:#}");
        }
    }

    /// Tear down and check that nothing is left.
    pub fn finish_checked(mut self) -> Result<()> {
        let errors = self.teardown();
        for e in errors.iter().filter(|e| e.starts_with("cleaned:")) {
            eprintln!("teardown {e}");
        }
        let mut problems: Vec<String> = errors
            .into_iter()
            .filter(|e| !e.starts_with("cleaned:"))
            .collect();
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        problems.extend(post_teardown_leaks(
            &self.dir,
            &self.tag,
            &self.address(),
            &self.known_sockets(),
            &ids,
        ));
        if !problems.is_empty() {
            bail!(
                "teardown problems:\n  {}\n--- containerd log tail ---\n{}",
                problems.join("\n  "),
                sys::tail_file(&self.log_path, 60)
            );
        }
        Ok(())
    }

    /// `leaks()` after waiting up to `timeout` for them to go away.
    pub fn wait_no_leaks(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.leaks();
            if l.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("leaks:\n  {}", l.join("\n  "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.torn_down {
            eprintln!(
                "--- containerd log tail ({}) ---\n{}\n--- end of log ---",
                self.log_path.display(),
                sys::tail_file(&self.log_path, 80)
            );
        }
        let errors = self.teardown();
        for e in errors {
            eprintln!("teardown: {e}");
        }
    }
}

/// End containerd: SIGTERM, and SIGKILL if it is still there after 10 s.
/// False when it took the SIGKILL.
fn terminate(child: &mut Child) -> bool {
    if !matches!(child.try_wait(), Ok(None)) {
        return true;
    }
    let pid = child.id() as i32;
    sys::kill(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() > deadline {
            sys::kill(pid, libc::SIGKILL);
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The files through which [`RESTART_HOOK`] asks and the harness answers,
/// in the instance directory.
const RESTART_REQUEST: &str = "restart.req";
const RESTART_ANSWER: &str = "restart.done";

/// The script of [`Containerd::restart_hook`]: request a restart, wait (up
/// to 2 minutes) for the harness's answer, fail unless it is `ok`.
const RESTART_HOOK: &str = r#"#!/bin/sh
d={dir}
rm -f "$d/restart.done"
: > "$d/restart.req"
i=0
while [ ! -e "$d/restart.done" ]; do
    i=$((i + 1))
    [ "$i" -le 1200 ] || { echo "restart hook: no answer from the test" >&2; exit 1; }
    sleep 0.1
done
reply=$(cat "$d/restart.done")
rm -f "$d/restart.done"
[ "$reply" = ok ] || { echo "restart hook: $reply" >&2; exit 1; }
"#;

/// `s` as one shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shim bundles below our state dir: (namespace, id, path).
fn bundles(dir: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let base = dir.join("state").join(TASK_PLUGIN_DIR);
    if let Ok(nss) = fs::read_dir(&base) {
        for ns in nss.flatten() {
            let nsname = ns.file_name().to_string_lossy().into_owned();
            if let Ok(bundles) = fs::read_dir(ns.path()) {
                for b in bundles.flatten() {
                    let id = b.file_name().to_string_lossy().into_owned();
                    out.push((nsname.clone(), id, b.path()));
                }
            }
        }
    }
    out
}

/// `address` files of the shim bundles below our state dir.
fn bundle_socket_addresses(dir: &Path) -> BTreeSet<PathBuf> {
    bundles(dir)
        .into_iter()
        .filter_map(|(_, _, b)| fs::read_to_string(b.join("address")).ok())
        .filter_map(|a| sys::socket_path_from_address(&a))
        .collect()
}

/// (namespace, id) of the bundles below our state dir.
fn bundle_ids(dir: &Path) -> BTreeSet<(String, String)> {
    bundles(dir)
        .into_iter()
        .map(|(ns, id, _)| (ns, id))
        .collect()
}

/// The cgroup directories of instance `tag`'s pods that exist: `/<tag>` in
/// every hierarchy (cgroupfs, and ctr-run containers with either driver)
/// and its systemd slice.
fn parent_cgroup_dirs(tag: &str) -> Vec<PathBuf> {
    let mut out = sys::cgroup_dirs(&format!("/{tag}"));
    out.extend(sys::cgroup_dirs(&slice_of(tag)));
    out
}

/// The loaded systemd units of instance `tag`: the scopes of its containers
/// and pods `ids` (any state: a failed scope stays loaded), and its slice
/// when `with_slice`. Empty when systemctl cannot tell.
fn our_units(tag: &str, ids: &BTreeSet<(String, String)>, with_slice: bool) -> Vec<sys::Unit> {
    let slice = slice_of(tag);
    let scopes: BTreeSet<String> = ids.iter().map(|(_, id)| cri_scope_of(id)).collect();
    let mut patterns = vec!["cri-containerd-*.scope"];
    if with_slice {
        patterns.push(&slice);
    }
    match sys::systemd_units(&patterns) {
        Ok(units) => units
            .into_iter()
            .filter(|u| scopes.contains(&u.name) || (with_slice && u.name == slice))
            .collect(),
        Err(e) => {
            eprintln!("systemd units of {tag}: {e:#}");
            Vec::new()
        }
    }
}

fn cleanup_instance(
    dir: &Path,
    tag: &str,
    sockets: &BTreeSet<PathBuf>,
    ids: &BTreeSet<(String, String)>,
) {
    let (_, errs) = cleanup_instance_report(dir, tag, sockets, ids);
    for e in errs {
        eprintln!("cleanup {}: {e}", dir.display());
    }
}

/// Remove every trace of the instance in `dir` after its containerd is gone.
/// Returns (what was cleaned, errors). What had to be cleaned here is
/// reported as `cleaned: ...` lines: the CRI/ctr path should have done it.
fn cleanup_instance_report(
    dir: &Path,
    tag: &str,
    sockets: &BTreeSet<PathBuf>,
    ids: &BTreeSet<(String, String)>,
) -> (Vec<String>, Vec<String>) {
    let mut cleaned = Vec::new();
    let mut errors = Vec::new();
    let address = dir.join("containerd.sock").to_string_lossy().into_owned();
    let mut sockets = sockets.clone();
    sockets.extend(bundle_socket_addresses(dir));
    let mut ids = ids.clone();
    ids.extend(bundle_ids(dir));

    // 1. Shims (and transient shim invocations) of our containerd.
    let shims = sys::processes_with_address(&address);
    for &p in &shims {
        for s in sys::unix_sockets_of(p) {
            if !s.starts_with(dir) {
                sockets.insert(s);
            }
        }
    }
    if !shims.is_empty() {
        cleaned.push(format!("killed shim processes {shims:?}"));
        for &p in &shims {
            sys::kill(p, libc::SIGKILL);
        }
        if !sys::wait_gone(&shims, Duration::from_secs(10)) {
            errors.push(format!("shim processes {shims:?} survived SIGKILL"));
        }
    }
    // 2. Processes in our cgroups (containers orphaned by a dead shim),
    // below `/<tag>` and in our systemd slice.
    let mut stray = BTreeSet::new();
    for d in parent_cgroup_dirs(tag) {
        stray.extend(sys::cgroup_tree_pids(&d));
    }
    if !stray.is_empty() {
        cleaned.push(format!("killed processes in our cgroups {stray:?}"));
    }
    // 3. Mounts below our directory.
    let mounted: Vec<_> = sys::mounts_under(dir)
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    if !mounted.is_empty() {
        cleaned.push(format!(
            "unmounted {:?}",
            mounted
                .iter()
                .map(|m| m.mount_point.display().to_string())
                .collect::<Vec<_>>()
        ));
    }
    // Killing first: an unmount does not stop the processes using the mount.
    for d in parent_cgroup_dirs(tag) {
        for pid in sys::cgroup_tree_pids(&d) {
            sys::kill(pid, libc::SIGKILL);
        }
    }
    errors.extend(sys::umount_all_under(dir));
    // 4. Our systemd units (the scopes of our containers, our slice), then
    // our cgroups (kills again whatever is still inside).
    if sys::systemd_booted() {
        let units: Vec<String> = our_units(tag, &ids, true)
            .into_iter()
            .map(|u| u.name)
            .collect();
        if units.iter().any(|u| u != &slice_of(tag)) {
            cleaned.push(format!("stopped systemd units {units:?}"));
        }
        errors.extend(sys::systemd_stop_units(&units));
    }
    errors.extend(sys::destroy_cgroup_tree(&format!("/{tag}"), true));
    errors.extend(sys::destroy_cgroup_tree(&slice_of(tag), true));
    // 5. Shim sockets that belonged to our shims.
    for s in &sockets {
        if s.starts_with(dir) {
            continue;
        }
        if s.exists() {
            cleaned.push(format!("removed socket {}", s.display()));
            if let Err(e) = fs::remove_file(s) {
                errors.push(format!("rm {}: {e}", s.display()));
            }
        }
    }
    // 6. runc state of our containers.
    for (ns, id) in &ids {
        for r in RUNC_STATE_ROOTS {
            let p = Path::new(r).join(ns).join(id);
            if p.exists() {
                cleaned.push(format!("removed runc state {}", p.display()));
                if let Err(e) = sys::remove_tree_same_fs(&p) {
                    errors.push(format!("rm {}: {e:#}", p.display()));
                }
            }
        }
    }
    // runc roots of our own ctr namespace.
    for r in RUNC_STATE_ROOTS {
        let p = Path::new(r).join(tag);
        if p.exists() {
            if let Err(e) = sys::remove_tree_same_fs(&p) {
                errors.push(format!("rm -r {}: {e:#}", p.display()));
            }
        }
    }
    // 7. The directory itself.
    if let Err(e) = sys::remove_tree_same_fs(dir) {
        errors.push(format!("rm -r {}: {e:#}", dir.display()));
    }
    let mut report: Vec<String> = cleaned.iter().map(|c| format!("cleaned: {c}")).collect();
    report.extend(errors.iter().cloned());
    (cleaned, report)
}

/// What is still there after a full teardown.
fn post_teardown_leaks(
    dir: &Path,
    tag: &str,
    address: &str,
    sockets: &BTreeSet<PathBuf>,
    ids: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for pid in sys::processes_with_address(address) {
        out.push(format!("process {pid} with our address still running"));
    }
    for m in sys::mounts_under(dir) {
        out.push(format!(
            "mount left: {} ({})",
            m.mount_point.display(),
            m.fs_type
        ));
    }
    for s in sockets {
        if s.exists() {
            out.push(format!("socket left: {}", s.display()));
        }
    }
    for d in parent_cgroup_dirs(tag) {
        out.push(format!("cgroup left: {}", d.display()));
    }
    if sys::systemd_booted() {
        out.extend(
            our_units(tag, ids, true)
                .into_iter()
                .map(|u| format!("systemd unit left: {} ({}/{})", u.name, u.active, u.sub)),
        );
    }
    if dir.exists() {
        out.push(format!("directory left: {}", dir.display()));
    }
    for r in RUNC_STATE_ROOTS {
        let p = Path::new(r).join(tag);
        if p.exists() {
            out.push(format!("runc root left: {}", p.display()));
        }
    }
    out
}

/// Clean up after test processes that died without running their Drop
/// (SIGKILL, abort): any `<tmp>/brisk-it-<pid>-<n>` whose pid is gone.
pub fn sweep_stale() {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 || sys::pid_alive(pid) {
            continue;
        }
        let dir = e.path();
        // Its containerd, if still running (PDEATHSIG normally took care).
        let conf = dir.join("config.toml").to_string_lossy().into_owned();
        for p in sys::all_pids() {
            if let Some(argv) = sys::cmdline(p) {
                if argv.iter().any(|a| a == &conf) {
                    sys::kill(p, libc::SIGKILL);
                    sys::wait_gone(&[p], Duration::from_secs(5));
                }
            }
        }
        eprintln!("sweeping stale test instance {}", dir.display());
        cleanup_instance(&dir, &name, &BTreeSet::new(), &BTreeSet::new());
    }
}
