//! The parts of an OCI spec the shim itself acts on.
//!
//! runc reads and validates the whole `config.json`, and the whole exec
//! process spec; the shim only needs a handful of fields from them. Decoding
//! only those keeps every shim small: oci-spec's complete `Spec` decoder
//! brings several hundred kilobytes of code (a regex engine among them, for a
//! single field) into a process that runs once per pod. Passing the exec
//! process spec to runc as containerd sent it, rather than re-encoding it,
//! also keeps fields a given oci-spec release does not know about.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;

use crate::error::{Result, ShimError};

/// What the shim reads of a bundle's `config.json`.
#[derive(Debug, Default, Deserialize)]
pub struct BundleSpec {
    #[serde(default, rename = "ociVersion")]
    pub oci_version: String,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    linux: Option<Linux>,
    #[serde(default)]
    hooks: Option<Hooks>,
}

#[derive(Debug, Default, Deserialize)]
struct Linux {
    #[serde(default)]
    namespaces: Option<Vec<Namespace>>,
    #[serde(default, rename = "cgroupsPath")]
    cgroups_path: Option<String>,
    #[serde(default, rename = "intelRdt")]
    intel_rdt: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct Hooks {
    #[serde(default)]
    poststop: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<String>,
}

impl BundleSpec {
    pub fn load(bundle: &Path) -> Result<Self> {
        let path = bundle.join("config.json");
        let bad = |reason: String| ShimError::Bundle {
            path: path.clone(),
            reason: format!("invalid or missing config.json: {reason}"),
        };
        let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&bytes).map_err(bad)
    }

    /// Decode a spec; it must at least be a JSON object with an `ociVersion`.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let spec: BundleSpec = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if spec.oci_version.is_empty() {
            return Err("no ociVersion".into());
        }
        Ok(spec)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// `linux.cgroupsPath`: where runc puts the container's cgroup (a path
    /// for the cgroupfs driver, `slice:prefix:name` for systemd's).
    pub fn cgroups_path(&self) -> Option<&str> {
        self.linux
            .as_ref()?
            .cgroups_path
            .as_deref()
            .filter(|p| !p.is_empty())
    }

    /// Hooks runc runs when it deletes the container.
    pub fn has_poststop_hooks(&self) -> bool {
        let hooks = self.hooks.as_ref().and_then(|h| h.poststop.as_ref());
        hooks.is_some_and(|h| !h.is_empty())
    }

    /// Intel RDT settings, whose resctrl group runc removes at delete.
    pub fn has_intel_rdt(&self) -> bool {
        self.linux.as_ref().is_some_and(|l| l.intel_rdt.is_some())
    }

    /// True when the container gets a pid namespace of its own (a `pid`
    /// namespace without a path to join). Otherwise it shares one (the
    /// pod's with shareProcessNamespace, the node's with hostPID), and its
    /// processes outlive its init unless the shim kills them.
    pub fn own_pid_namespace(&self) -> bool {
        let namespaces = self.linux.as_ref().and_then(|l| l.namespaces.as_ref());
        namespaces.is_some_and(|ns| {
            ns.iter()
                .any(|n| n.kind == "pid" && n.path.as_deref().unwrap_or("").is_empty())
        })
    }
}

/// An exec's process spec: checked for shape, kept as the bytes containerd
/// sent, and handed to runc unchanged.
#[derive(Debug, Clone)]
pub struct ExecProcessSpec {
    json: Vec<u8>,
}

#[derive(Deserialize)]
struct ExecProcessShape {
    args: Option<Vec<String>>,
    #[serde(rename = "commandLine")]
    command_line: Option<String>,
    cwd: String,
}

impl ExecProcessSpec {
    /// The fields runc cannot start a process without must be there, with
    /// the right types, so that a bad request fails here with a clear error
    /// rather than later inside runc.
    pub fn parse(json: &[u8]) -> std::result::Result<Self, String> {
        let shape: ExecProcessShape = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let has_args = shape.args.is_some_and(|a| !a.is_empty());
        if !has_args && shape.command_line.is_none() {
            return Err("no args".into());
        }
        if shape.cwd.is_empty() {
            return Err("empty cwd".into());
        }
        Ok(ExecProcessSpec {
            json: json.to_vec(),
        })
    }

    pub fn json(&self) -> &[u8] {
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_spec_reads_annotations_and_ignores_the_rest() {
        let s = BundleSpec::parse(
            br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"execCPUAffinity":{"initial":"0-1"}},
                "annotations":{"io.kubernetes.cri.sandbox-id":"abc"},"linux":{"namespaces":[]}}"#,
        )
        .unwrap();
        assert_eq!(s.annotation("io.kubernetes.cri.sandbox-id"), Some("abc"));
        assert_eq!(s.annotation("missing"), None);
    }

    #[test]
    fn pid_namespace_of_its_own_or_shared() {
        let own = br#"{"ociVersion":"1","linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#;
        assert!(BundleSpec::parse(own).unwrap().own_pid_namespace());
        let pod = br#"{"ociVersion":"1","linux":{"namespaces":[{"type":"pid","path":"/proc/7/ns/pid"}]}}"#;
        assert!(!BundleSpec::parse(pod).unwrap().own_pid_namespace());
        let host = br#"{"ociVersion":"1","linux":{"namespaces":[{"type":"mount"}]}}"#;
        assert!(!BundleSpec::parse(host).unwrap().own_pid_namespace());
        assert!(!BundleSpec::parse(br#"{"ociVersion":"1"}"#)
            .unwrap()
            .own_pid_namespace());
    }

    #[test]
    fn poststop_hooks_and_intel_rdt_are_seen() {
        let plain =
            BundleSpec::parse(br#"{"ociVersion":"1","hooks":{"prestart":[{"path":"/x"}]}}"#)
                .unwrap();
        assert!(!plain.has_poststop_hooks());
        assert!(!plain.has_intel_rdt());
        let hooked = BundleSpec::parse(
            br#"{"ociVersion":"1","hooks":{"poststop":[{"path":"/bin/true","args":["true"]}]}}"#,
        )
        .unwrap();
        assert!(hooked.has_poststop_hooks());
        let empty = BundleSpec::parse(br#"{"ociVersion":"1","hooks":{"poststop":[]}}"#).unwrap();
        assert!(!empty.has_poststop_hooks());
        let rdt = BundleSpec::parse(br#"{"ociVersion":"1","linux":{"intelRdt":{"closID":"c"}}}"#)
            .unwrap();
        assert!(rdt.has_intel_rdt());
    }

    #[test]
    fn bundle_spec_rejects_what_is_not_a_spec() {
        assert!(BundleSpec::parse(b"{ this is not json").is_err());
        assert!(BundleSpec::parse(b"[]").is_err());
        assert!(BundleSpec::parse(b"{}").unwrap_err().contains("ociVersion"));
        assert!(BundleSpec::parse(br#"{"ociVersion":"1","annotations":{"a":1}}"#).is_err());
        assert!(BundleSpec::parse(br#"{"ociVersion":"1","annotations":null}"#).is_ok());
    }

    #[test]
    fn exec_spec_is_kept_byte_for_byte() {
        let raw = br#"{"args":["sh","-c","true"],"cwd":"/","futureField":{"x":1}}"#;
        let s = ExecProcessSpec::parse(raw).unwrap();
        assert_eq!(s.json(), raw);
    }

    #[test]
    fn exec_spec_needs_args_and_cwd() {
        assert!(ExecProcessSpec::parse(b"not json").is_err());
        assert!(ExecProcessSpec::parse(br#"{"cwd":"/"}"#)
            .unwrap_err()
            .contains("args"));
        assert!(ExecProcessSpec::parse(br#"{"args":[],"cwd":"/"}"#).is_err());
        assert!(ExecProcessSpec::parse(br#"{"args":["sh"]}"#).is_err());
        assert!(ExecProcessSpec::parse(br#"{"args":"sh","cwd":"/"}"#).is_err());
    }
}
