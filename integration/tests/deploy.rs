//! What an operator deploys, checked against the real thing: every
//! containerd snippet in `configs/containerd/` is loaded by the containerd
//! release it is written for (`containerd config dump`), `configs/brisk.toml`
//! parses with the shim's own parser and runs a pod, the Kubernetes
//! manifests are what they claim, and the containerd and runc a run selected
//! (`BRISK_CONTAINERD_BIN`, `BRISK_RUNC_BIN`) are the ones serving the pods.
//!
//! containerd 1.7 and 2.1 come from `scripts/fetch-containerd-versions.sh
//! DIR`, 2.2 and 2.3 from `scripts/build-containerd-from-source.sh DIR`, with
//! `BRISK_CONTAINERD_VERSIONS_DIR=DIR` (default
//! `<workspace>/target/containerd-versions`); the releases not there are
//! skipped with a message, unless `BRISK_REQUIRE_CONTAINERD_VERSIONS=1`
//! (which requires 2.2 and 2.3 only where their source tarballs are, as the
//! build script skips them otherwise).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use brisk_integration::containerd::{containerd_version, workspace_root, BRISK_RUNTIME_TYPE};
use brisk_integration::{sys, ContainerSpec, Containerd, Options, BRISK_HANDLER};

const CONFIG_PATH: &str = "/etc/containerd/brisk.toml";
const ANNOTATIONS: &str = "io.containerd.brisk.*";

fn configs() -> PathBuf {
    workspace_root().join("configs")
}

fn versions_dir() -> PathBuf {
    match std::env::var_os("BRISK_CONTAINERD_VERSIONS_DIR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/containerd-versions"),
    }
}

/// Where `scripts/build-containerd-from-source.sh` looks for the source
/// tarballs: `$BRISK_CONTAINERD_SRC`, else `../shared/containerd-src` beside
/// the workspace.
fn containerd_src_dir() -> PathBuf {
    match std::env::var_os("BRISK_CONTAINERD_SRC") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("../shared/containerd-src"),
    }
}

/// The containerd binaries to check the snippets with: Debian 12's, the
/// fetched releases and the ones built from source.
fn containerds() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let system = Path::new("/usr/bin/containerd");
    if system.is_file() {
        out.push(system.to_path_buf());
    } else {
        eprintln!("no /usr/bin/containerd: skipping containerd 1.6");
    }
    let require = std::env::var_os("BRISK_REQUIRE_CONTAINERD_VERSIONS").is_some();
    let dir = versions_dir();
    let src = containerd_src_dir();
    // (release, where its source tarball must be for it to be required)
    let releases = [
        ("1.7.24", None),
        ("2.1.9", None),
        ("2.2.7", Some(src.join("containerd-2.2.7.tar.xz"))),
        ("2.3.4", Some(src.join("containerd-2.3.4.tar.xz"))),
    ];
    for (release, tarball) in releases {
        let tree = dir.join(format!("containerd-{release}"));
        let bin = tree.join("usr/bin/containerd");
        let script = match tarball {
            None => "scripts/fetch-containerd-versions.sh",
            Some(_) => "scripts/build-containerd-from-source.sh",
        };
        if tree.join(".complete").exists() && bin.is_file() {
            out.push(bin);
        } else if let Some(t) = tarball.as_ref().filter(|t| !t.is_file()) {
            eprintln!(
                "containerd {release}: no source tarball {}: skipping it ({script})",
                t.display()
            );
        } else if require {
            panic!("{} missing: run {script} {}", tree.display(), dir.display());
        } else {
            eprintln!(
                "containerd {release} not in {}: skipping it ({script})",
                dir.display()
            );
        }
    }
    out
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("brisk-deploy-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn q(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

/// The private part of a config: its own root, state, sockets, opt dir;
/// `extra` (top-level keys) goes before the first table.
fn base_config(version: u32, dir: &Path, extra: &str) -> String {
    format!(
        "version = {version}\nroot = {}\nstate = {}\n{extra}\n[grpc]\n  address = {}\n\n[ttrpc]\n  address = {}\n\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
        q(&dir.join("root")),
        q(&dir.join("state")),
        q(&dir.join("containerd.sock")),
        q(&dir.join("containerd.sock.ttrpc")),
        q(&dir.join("opt")),
    )
}

/// A snippet without its `version = N` line, to append to a base config as
/// an operator merges it into config.toml.
fn snippet_body(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("version"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn snippet_version(text: &str) -> u32 {
    let v: toml::Value = toml::from_str(text).expect("snippet is TOML");
    v.get("version")
        .and_then(|v| v.as_integer())
        .expect("snippet has a version") as u32
}

/// `containerd --config CONFIG config dump`, parsed.
fn dump(containerd: &Path, config: &Path) -> toml::Value {
    let out = sys::run_with_timeout(
        Command::new(containerd)
            .arg("--config")
            .arg(config)
            .args(["config", "dump"]),
        Duration::from_secs(30),
    )
    .expect("containerd config dump");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} --config {} config dump failed: {}\n{}\nconfig:\n{}",
        containerd.display(),
        config.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(config).unwrap_or_default()
    );
    toml::from_str(&stdout).unwrap_or_else(|e| panic!("config dump is not TOML ({e}):\n{stdout}"))
}

/// CRI's `containerd` table in a dumped config (of any version: 2.x dumps
/// version 3, 2.3 version 4, both with CRI split into its v1 plugins).
fn cri_containerd(dumped: &toml::Value) -> &toml::Value {
    let version = dumped.get("version").and_then(|v| v.as_integer());
    let plugin = if version.is_some_and(|v| v >= 3) {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    dumped
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .and_then(|p| p.get("containerd"))
        .unwrap_or_else(|| panic!("no plugins.{plugin:?}.containerd in the dump:\n{dumped}"))
}

fn runtime<'a>(dumped: &'a toml::Value, handler: &str) -> &'a toml::Value {
    cri_containerd(dumped)
        .get("runtimes")
        .and_then(|r| r.get(handler))
        .unwrap_or_else(|| panic!("no runtime {handler:?} in the dump:\n{dumped}"))
}

fn str_at<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for k in path {
        v = v.get(k)?;
    }
    v.as_str()
}

/// The handler a snippet registers, and whether it must be the default.
fn snippet_handler(name: &str) -> &'static str {
    if name.contains("canary") {
        "runc"
    } else {
        BRISK_HANDLER
    }
}

/// Checks what an operator relies on in the runtime a snippet registers.
fn check_brisk_runtime(dumped: &toml::Value, handler: &str, what: &str) {
    let rt = runtime(dumped, handler);
    assert_eq!(
        str_at(rt, &["runtime_type"]),
        Some(BRISK_RUNTIME_TYPE),
        "{what}: runtime_type of handler {handler}: {rt}"
    );
    assert_eq!(
        str_at(rt, &["options", "ConfigPath"]),
        Some(CONFIG_PATH),
        "{what}: ConfigPath of handler {handler}: {rt}"
    );
    let ann: Vec<&str> = rt
        .get("pod_annotations")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert!(
        ann.contains(&ANNOTATIONS),
        "{what}: pod_annotations of handler {handler}: {ann:?}"
    );
    if handler == "runc" {
        assert_eq!(
            str_at(cri_containerd(dumped), &["default_runtime_name"]),
            Some("runc"),
            "{what}: the canary handler is the default"
        );
    }
}

fn snippets() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(configs().join("containerd"))
        .expect("configs/containerd")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "v2-brisk.toml",
        "v2-canary-runc.toml",
        "v3-brisk.toml",
        "v3-canary-runc.toml",
    ] {
        assert!(names.contains(&want), "configs/containerd/{want} missing");
    }
    out
}

/// Each snippet, merged into a config as the operator is told to, loads in
/// the containerd release it is written for and registers brisk there:
/// version 2 snippets pasted into the config of containerd 1.6 and 1.7 (and
/// of 2.x, which migrates version 2), version 3 snippets through `imports`
/// on 2.x, which keeps the main config's own runtimes.
#[test]
fn containerd_snippets_load() {
    let snippets = snippets();
    let mut checked = 0;
    for containerd in containerds() {
        let (major, minor, patch) = containerd_version(&containerd).expect("containerd --version");
        let release = format!("{major}.{minor}.{patch}");
        for (name, text) in &snippets {
            let version = snippet_version(text);
            let scratch = Scratch::new(&format!("{release}-{name}"));
            let dir = &scratch.0;
            let config = dir.join("config.toml");
            let handler = snippet_handler(name);
            let what = format!("{name} on containerd {release}");
            match (version, major >= 2) {
                // Pasted into config.toml.
                (2, _) => {
                    let full = format!("{}\n{}\n", base_config(2, dir, ""), snippet_body(text));
                    fs::write(&config, full).unwrap();
                    let dumped = dump(&containerd, &config);
                    check_brisk_runtime(&dumped, handler, &what);
                }
                // Imported by a config that has its own runc handler.
                (3, true) => {
                    let snippet = dir.join(name);
                    fs::write(&snippet, text).unwrap();
                    let full = format!(
                        "{}\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"example.org/pause:1\"\n",
                        base_config(3, dir, &format!("imports = [{}]\n", q(&snippet)))
                    );
                    fs::write(&config, full).unwrap();
                    let dumped = dump(&containerd, &config);
                    check_brisk_runtime(&dumped, handler, &what);
                    // The import added to the main config; it replaced nothing.
                    assert_eq!(
                        str_at(
                            &dumped,
                            &[
                                "plugins",
                                "io.containerd.cri.v1.images",
                                "pinned_images",
                                "sandbox"
                            ]
                        ),
                        Some("example.org/pause:1"),
                        "{what}: the main config's sandbox image survives the import"
                    );
                    let runc = runtime(&dumped, "runc");
                    assert_eq!(
                        runc.get("options")
                            .and_then(|o| o.get("SystemdCgroup"))
                            .and_then(|v| v.as_bool()),
                        Some(true),
                        "{what}: the main config's runc options survive the import: {runc}"
                    );
                    if handler == BRISK_HANDLER {
                        assert_eq!(
                            str_at(runc, &["runtime_type"]),
                            Some("io.containerd.runc.v2"),
                            "{what}: the runc handler is untouched"
                        );
                    }
                }
                // Version 3 is for containerd 2.x only.
                (3, false) => continue,
                (v, _) => panic!("{name}: unexpected config version {v}"),
            }
            eprintln!("ok: {what}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no snippet checked");
}

/// `configs/brisk.toml` sets every key the shim knows, each to its default,
/// and parses with the shim's own parser.
#[test]
fn brisk_toml_example_is_the_defaults() {
    use brisk_shim::config::{FileConfig, RuntimeConfig, DEFAULT_RUNC_ROOT};
    let path = configs().join("brisk.toml");
    let file = FileConfig::load(&path).expect("configs/brisk.toml parses");
    let d = RuntimeConfig::defaults("k8s.io");
    assert_eq!(
        file.runc_binary.as_deref().map(PathBuf::from),
        Some(d.runc_binary.clone())
    );
    assert_eq!(
        file.runc_root.as_deref(),
        Some(Path::new(DEFAULT_RUNC_ROOT))
    );
    assert_eq!(
        file.runc_root.as_ref().map(|r| r.join("k8s.io")),
        Some(d.runc_root.clone())
    );
    assert_eq!(file.systemd_cgroup, Some(d.systemd_cgroup));
    assert_eq!(file.runc_timeout_secs, Some(d.runc_timeout_secs));
    assert_eq!(file.volatile, Some(d.volatile));
    assert_eq!(
        file.discard_dirty_volatile_workdir,
        Some(d.discard_dirty_volatile_workdir)
    );
    // Every key is documented: a comment right above it.
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with('#') && l.contains('=') {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "configs/brisk.toml: {l:?} has no comment above it"
            );
        }
    }
}

/// A pod runs under brisk with `ConfigPath` naming `configs/brisk.toml`.
#[test]
fn brisk_toml_example_runs_a_pod() {
    if !brisk_integration::integration_enabled() {
        return;
    }
    brisk_integration::require_brisk();
    let cd = Containerd::start_with(Options {
        brisk_config: Some(configs().join("brisk.toml")),
        ..Default::default()
    })
    .expect("private containerd");
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "example-config")
        .expect("pod");
    let id = cri
        .run_container(&pod, &ContainerSpec::sh("c", "sleep 1000"))
        .expect("container");
    let state = Path::new("/run/containerd/brisk/k8s.io").join(&id);
    assert!(
        state.join("state.json").is_file(),
        "runc state under the default runc_root: {}",
        state.display()
    );
    let done = cri
        .run_container(&pod, &ContainerSpec::sh("done", "exit 3"))
        .expect("second container");
    let st = cri
        .wait_for_exited(&done, Duration::from_secs(30))
        .expect("exited");
    assert_eq!(st.exit_code, 3);
    cri.stop_pod(&pod.id).expect("stop pod");
    cri.remove_pod(&pod.id).expect("remove pod");
    cd.assert_no_leaks();
    cd.finish();
}

fn yaml_docs(name: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let path = configs().join("kubernetes").join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn y<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for k in path {
        v = v.get(k)?;
    }
    v.as_str()
}

#[test]
fn kubernetes_manifests() {
    let rc = yaml_docs("runtimeclass.yaml");
    assert_eq!(rc.len(), 1);
    let rc = &rc[0];
    assert_eq!(y(rc, &["apiVersion"]), Some("node.k8s.io/v1"));
    assert_eq!(y(rc, &["kind"]), Some("RuntimeClass"));
    assert_eq!(y(rc, &["metadata", "name"]), Some("brisk"));
    assert_eq!(y(rc, &["handler"]), Some(BRISK_HANDLER));

    let job = yaml_docs("job-short-task.yaml");
    assert_eq!(job.len(), 1);
    let job = &job[0];
    assert_eq!(y(job, &["apiVersion"]), Some("batch/v1"));
    assert_eq!(y(job, &["kind"]), Some("Job"));
    let spec = job
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
        .expect("spec.template.spec");
    assert_eq!(y(spec, &["runtimeClassName"]), Some("brisk"));
    assert!(matches!(
        y(spec, &["restartPolicy"]),
        Some("Never") | Some("OnFailure")
    ));
    let containers = spec
        .get("containers")
        .and_then(|c| c.as_sequence())
        .expect("containers");
    assert!(!containers.is_empty());
    for c in containers {
        assert!(y(c, &["image"]).is_some() && y(c, &["name"]).is_some());
    }
}

/// The containerd and runc this run selected serve the pods: containerd's
/// executable, its release's `containerd-shim-runc-v2` and the `runc` at the
/// front of the shims' PATH. Run by the compatibility matrix
/// (`scripts/test-matrix.sh`) for each combination.
#[test]
fn selected_binaries_serve_the_pods() {
    if !brisk_integration::integration_enabled() {
        return;
    }
    brisk_integration::require_brisk();
    let cd = Containerd::start().expect("private containerd");
    let want = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| fs::canonicalize(v).expect("canonical path"))
    };
    let pid = cd.containerd_pid().expect("containerd pid");
    if let Some(c) = want("BRISK_CONTAINERD_BIN") {
        assert_eq!(sys::exe(pid), Some(c.clone()), "containerd executable");
        assert_eq!(
            containerd_version(&c).unwrap(),
            cd.containerd_version,
            "containerd version"
        );
    }
    let cri = cd.cri();
    for handler in [brisk_integration::RUNC_HANDLER, BRISK_HANDLER] {
        let pod = cri
            .run_pod_sandbox(handler, &format!("bins-{handler}"))
            .expect("pod");
        let shims = if handler == BRISK_HANDLER {
            cd.brisk_shim_pids()
        } else {
            cd.runc_shim_pids()
        };
        assert_eq!(shims.len(), 1, "{handler}: one shim");
        let shim = shims[0];
        if handler != BRISK_HANDLER {
            if let Some(c) = want("BRISK_CONTAINERD_BIN") {
                assert_eq!(
                    sys::exe(shim),
                    fs::canonicalize(c.parent().unwrap().join("containerd-shim-runc-v2")).ok(),
                    "the stock shim of containerd's own release"
                );
            }
        }
        let environ = fs::read(format!("/proc/{shim}/environ")).expect("shim environ");
        let path = environ
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"PATH="))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .expect("shim PATH");
        let runc = path
            .split(':')
            .map(|d| Path::new(d).join("runc"))
            .find(|p| p.is_file())
            .expect("runc on the shim's PATH");
        let runc = fs::canonicalize(runc).unwrap();
        let expected =
            want("BRISK_RUNC_BIN").unwrap_or_else(|| fs::canonicalize("/usr/sbin/runc").unwrap());
        assert_eq!(runc, expected, "{handler}: runc the shim runs");
        cri.stop_pod(&pod.id).expect("stop pod");
        cri.remove_pod(&pod.id).expect("remove pod");
    }
    eprintln!(
        "containerd {:?} ({}), runc {}",
        cd.containerd_version,
        cd.containerd_bin.display(),
        want("BRISK_RUNC_BIN")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "on PATH".into())
    );
    cd.assert_no_leaks();
    cd.finish();
}
