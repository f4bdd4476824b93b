//! Where the shim's settings come from.
//!
//! containerd 1.6's CRI only hands runc-style options to runtime types named
//! `io.containerd.runc.*`; any other runtime type gets `runtimeoptions.v1.Options`
//! (a path to a config file) or nothing. So the shim takes, in order:
//! containerd's runc options message, the TOML file named by `ConfigPath`
//! (or the TOML in `ConfigBody`), and finally the documented defaults.

use std::path::{Path, PathBuf};

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, CodedInputStream, Message},
    shim::oci::Options as RuncOptions,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};

/// The default parent of runc's state. Distinct from the stock shim's
/// `/run/containerd/runc`, so the two never see each other's containers.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/brisk";

/// brisk.toml is a handful of keys; anything this big is not one.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The operator's `brisk.toml`. Every key is optional; unknown keys are an
/// error so a typo does not silently fall back to a default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// runc binary: a name looked up on PATH, or an absolute path.
    pub runc_binary: Option<String>,
    /// Parent directory of runc's state; the namespace is appended.
    pub runc_root: Option<PathBuf>,
    /// Let runc drive cgroups through systemd.
    pub systemd_cgroup: Option<bool>,
    /// Upper bound of one runc call, in seconds.
    pub runc_timeout_secs: Option<u64>,
    /// Mount overlay rootfs with `volatile` where the kernel supports it.
    pub volatile: Option<bool>,
    /// Remove the volatile marker of a workdir left by an unclean shutdown
    /// and mount it anyway, instead of failing Create.
    pub discard_dirty_volatile_workdir: Option<bool>,
}

impl FileConfig {
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| ShimError::Config {
            path: origin.to_path_buf(),
            // The full text names the key and the line, not just the problem.
            reason: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| ShimError::Config {
            path: path.to_path_buf(),
            reason,
        };
        // A FIFO or device here would block or never end; refuse it up front.
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text, path)
    }
}

/// The settings one container runs with, after every source is applied.
/// Saved in the bundle so `containerd-shim-brisk-v2 delete` can clean up
/// with the same runc after the shim died.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuntimeConfig {
    pub runc_binary: PathBuf,
    /// runc's `--root` for this container (already per namespace).
    pub runc_root: PathBuf,
    pub systemd_cgroup: bool,
    pub runc_timeout_secs: u64,
    #[serde(default)]
    pub no_pivot_root: bool,
    #[serde(default)]
    pub no_new_keyring: bool,
    #[serde(default = "yes")]
    pub volatile: bool,
    #[serde(default)]
    pub discard_dirty_volatile_workdir: bool,
    /// Owner given to the stdio FIFOs and pipes of the container (runc
    /// options `io_uid`/`io_gid`: a user-namespaced pod's root).
    #[serde(default)]
    pub io_uid: u32,
    #[serde(default)]
    pub io_gid: u32,
}

fn yes() -> bool {
    true
}

/// Name of the file in the bundle that keeps the [`RuntimeConfig`].
pub const SAVED_CONFIG: &str = "brisk-runtime.json";

impl RuntimeConfig {
    pub fn defaults(namespace: &str) -> Self {
        RuntimeConfig {
            runc_binary: PathBuf::from("runc"),
            runc_root: Path::new(DEFAULT_RUNC_ROOT).join(namespace),
            systemd_cgroup: false,
            runc_timeout_secs: 60,
            no_pivot_root: false,
            no_new_keyring: false,
            volatile: true,
            discard_dirty_volatile_workdir: false,
            io_uid: 0,
            io_gid: 0,
        }
    }

    /// Resolves the settings from the `options` of a Create request.
    pub fn from_create_options(namespace: &str, options: Option<&Any>) -> Result<Self> {
        let mut cfg = Self::defaults(namespace);
        let Some(any) = options.filter(|a| !a.type_url.is_empty()) else {
            return Ok(cfg);
        };
        if any.type_url.ends_with("containerd.runc.v1.Options") {
            let o = RuncOptions::parse_from_bytes(&any.value)
                .map_err(|e| ShimError::InvalidArgument(format!("runc options: {e}")))?;
            if !o.binary_name.is_empty() {
                cfg.runc_binary = PathBuf::from(&o.binary_name);
            }
            if !o.root.is_empty() {
                cfg.runc_root = Path::new(&o.root).join(namespace);
            }
            cfg.systemd_cgroup = o.systemd_cgroup;
            cfg.no_pivot_root = o.no_pivot_root;
            cfg.no_new_keyring = o.no_new_keyring;
            cfg.io_uid = o.io_uid;
            cfg.io_gid = o.io_gid;
        } else if any.type_url.ends_with("runtimeoptions.v1.Options") {
            let ro = decode_runtime_options(&any.value)?;
            let file = if !ro.config_body.is_empty() {
                FileConfig::parse(&ro.config_body, Path::new("<ConfigBody>"))?
            } else if !ro.config_path.is_empty() {
                FileConfig::load(Path::new(&ro.config_path))?
            } else {
                FileConfig::default()
            };
            cfg.apply(namespace, &file);
        } else {
            return Err(ShimError::InvalidArgument(format!(
                "unsupported runtime options type {}",
                any.type_url
            )));
        }
        Ok(cfg)
    }

    fn apply(&mut self, namespace: &str, file: &FileConfig) {
        if let Some(b) = &file.runc_binary {
            self.runc_binary = PathBuf::from(b);
        }
        if let Some(r) = &file.runc_root {
            self.runc_root = r.join(namespace);
        }
        if let Some(s) = file.systemd_cgroup {
            self.systemd_cgroup = s;
        }
        if let Some(t) = file.runc_timeout_secs {
            self.runc_timeout_secs = t.max(1);
        }
        if let Some(v) = file.volatile {
            self.volatile = v;
        }
        if let Some(d) = file.discard_dirty_volatile_workdir {
            self.discard_dirty_volatile_workdir = d;
        }
    }

    pub fn save(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(SAVED_CONFIG);
        let json = serde_json::to_vec(self).map_err(|e| ShimError::Other(e.to_string()))?;
        std::fs::write(&path, json)
            .map_err(|e| ShimError::io(format!("write {}", path.display()), e))
    }

    /// The saved settings of a bundle, or the defaults when there are none.
    pub fn load_saved(bundle: &Path, namespace: &str) -> Self {
        std::fs::read(bundle.join(SAVED_CONFIG))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Self::defaults(namespace))
    }
}

/// `runtimeoptions.v1.Options` from containerd's CRI plugin. It is not in the
/// generated protos, and it has three string fields, so it is decoded here.
#[derive(Debug, Default, PartialEq)]
pub struct RuntimeOptions {
    pub type_url: String,
    pub config_path: String,
    pub config_body: String,
}

pub fn decode_runtime_options(bytes: &[u8]) -> Result<RuntimeOptions> {
    let bad = |e: containerd_shim_protos::protobuf::Error| {
        ShimError::InvalidArgument(format!("runtimeoptions.v1.Options: {e}"))
    };
    let mut out = RuntimeOptions::default();
    let mut is = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (1, 2) => out.type_url = is.read_string().map_err(bad)?,
            (2, 2) => out.config_path = is.read_string().map_err(bad)?,
            (3, 2) => {
                out.config_body =
                    String::from_utf8_lossy(&is.read_bytes().map_err(bad)?).into_owned()
            }
            (_, 0) => drop(is.read_raw_varint64().map_err(bad)?),
            (_, 1) => drop(is.read_fixed64().map_err(bad)?),
            (_, 2) => drop(is.read_bytes().map_err(bad)?),
            (_, 5) => drop(is.read_fixed32().map_err(bad)?),
            _ => {
                return Err(ShimError::InvalidArgument(format!(
                    "runtimeoptions.v1.Options: unsupported wire type {wire} of field {field}"
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::CodedOutputStream;

    use super::*;

    fn encode(path: &str, body: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut buf);
            os.write_string(1, "io.containerd.brisk.v1.Config").unwrap();
            os.write_string(2, path).unwrap();
            os.write_bytes(3, body.as_bytes()).unwrap();
            os.write_uint32(9, 7).unwrap();
            os.flush().unwrap();
        }
        buf
    }

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_without_options() {
        let cfg = RuntimeConfig::from_create_options("k8s.io", None).unwrap();
        assert_eq!(cfg.runc_binary, PathBuf::from("runc"));
        assert_eq!(cfg.runc_root, PathBuf::from("/run/containerd/brisk/k8s.io"));
    }

    #[test]
    fn runc_options_win() {
        let o = RuncOptions {
            binary_name: "/opt/runc".into(),
            root: "/run/x".into(),
            systemd_cgroup: true,
            io_uid: 100000,
            io_gid: 100001,
            ..Default::default()
        };
        let a = any("containerd.runc.v1.Options", o.write_to_bytes().unwrap());
        let cfg = RuntimeConfig::from_create_options("ns", Some(&a)).unwrap();
        assert_eq!(cfg.runc_binary, PathBuf::from("/opt/runc"));
        assert_eq!(cfg.runc_root, PathBuf::from("/run/x/ns"));
        assert!(cfg.systemd_cgroup);
        assert_eq!((cfg.io_uid, cfg.io_gid), (100000, 100001));
    }

    #[test]
    fn config_path_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brisk.toml");
        std::fs::write(
            &path,
            "runc_binary = \"/usr/sbin/runc\"\nrunc_root = \"/run/b\"\nvolatile = false\n",
        )
        .unwrap();
        let a = any(
            "runtimeoptions.v1.Options",
            encode(path.to_str().unwrap(), ""),
        );
        let cfg = RuntimeConfig::from_create_options("k8s.io", Some(&a)).unwrap();
        assert_eq!(cfg.runc_binary, PathBuf::from("/usr/sbin/runc"));
        assert_eq!(cfg.runc_root, PathBuf::from("/run/b/k8s.io"));
        assert!(!cfg.volatile);
        assert!(!cfg.discard_dirty_volatile_workdir);
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            FileConfig::parse("runc_bianry = \"x\"", Path::new("/etc/brisk.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("runc_bianry") && msg.contains("/etc/brisk.toml"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_toml_is_an_error() {
        let a = any("runtimeoptions.v1.Options", encode("", "runc_root = ["));
        assert!(RuntimeConfig::from_create_options("ns", Some(&a)).is_err());
    }

    #[test]
    fn missing_config_file_is_named() {
        let a = any(
            "runtimeoptions.v1.Options",
            encode("/nonexistent/brisk.toml", ""),
        );
        let err = RuntimeConfig::from_create_options("ns", Some(&a)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/brisk.toml"));
    }

    #[test]
    fn config_path_must_be_a_regular_file() {
        let a = any("runtimeoptions.v1.Options", encode("/dev/zero", ""));
        let err = RuntimeConfig::from_create_options("ns", Some(&a)).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn runtime_options_decode_roundtrip() {
        let ro = decode_runtime_options(&encode("/p", "b = 1")).unwrap();
        assert_eq!(ro.config_path, "/p");
        assert_eq!(ro.config_body, "b = 1");
        assert!(decode_runtime_options(&[0xff, 0xff]).is_err());
    }
}
