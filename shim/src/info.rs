//! `containerd-shim-brisk-v2 -info`: containerd 2.x asks a runtime what it
//! is and what its OCI runtime supports (CRI reads user namespace and
//! recursive read-only mount support from the answer). The handler's
//! options come on stdin, in either format of [`crate::start_input`]; the
//! answer is a `RuntimeInfo` on stdout, with `runc features` in it.

use std::{io::Read, io::Write, process::Command};

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, Message, MessageField},
    types::introspection::{RuntimeInfo, RuntimeVersion},
};

use crate::{
    bootstrap::RUNTIME_ID,
    config::RuntimeConfig,
    error::ShimError,
    start_input::{Expected, InputError, StartInput, MAX_INPUT},
};

/// The type containerd registers the OCI runtime-spec `Features` under.
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("read stdin: {0}")]
    Stdin(std::io::Error),

    #[error(transparent)]
    Input(#[from] InputError),

    #[error(transparent)]
    Options(#[from] ShimError),

    #[error("write stdout: {0}")]
    Stdout(std::io::Error),
}

pub fn run() -> Result<(), InfoError> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_end(&mut raw)
        .map_err(InfoError::Stdin)?;
    let input = StartInput::decode(
        &raw,
        Expected {
            id: "",
            namespace: "",
        },
    )?;
    let info = runtime_info(input.options)?;
    let bytes = info
        .write_to_bytes()
        .map_err(|e| InfoError::Stdout(std::io::Error::other(e)))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(InfoError::Stdout)
}

/// The answer for a handler with `options`: its runc is the one Create
/// would use (runc options' `BinaryName`, or brisk.toml's `runc_binary`).
pub fn runtime_info(options: Option<Any>) -> Result<RuntimeInfo, ShimError> {
    let cfg = RuntimeConfig::from_create_options("default", options.as_ref())?;
    let features = runc_features(&cfg.runc_binary.to_string_lossy());
    Ok(RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: env!("BRISK_GIT_COMMIT").to_string(),
            ..Default::default()
        }),
        options: options.into(),
        features: features.into(),
        ..Default::default()
    })
}

/// `runc features` as containerd expects it: runc's JSON, unchanged (so
/// fields a given oci-spec release does not know survive). None when runc
/// has no such command or fails; containerd then assumes nothing, as it
/// does for the stock shim. The reason goes to stderr, which containerd
/// shows only when `-info` fails.
fn runc_features(runc: &str) -> Option<Any> {
    let out = match Command::new(runc).arg("features").output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            eprintln!(
                "{runc} features: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("{runc} features: {e}");
            return None;
        }
    };
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
        eprintln!("{runc} features: not JSON: {e}");
        return None;
    }
    Some(Any {
        type_url: FEATURES_TYPE_URL.to_string(),
        value: out,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A child process writes the script: were it open for writing here,
    /// another test thread forking meanwhile would hold that fd until its
    /// exec, and running the script would fail with "Text file busy".
    fn write_script(path: &std::path::Path, body: &str) {
        let mut child = Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "#!/bin/sh\n{body}").unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn runtime_options_for(toml: &std::path::Path) -> Any {
        // runtimeoptions.v1.Options { config_path = 2 }
        let path = toml.to_string_lossy().into_owned();
        let mut value = vec![0x12, path.len() as u8];
        value.extend_from_slice(path.as_bytes());
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn features_come_from_the_configured_runc() {
        let dir = tempfile::tempdir().unwrap();
        let runc = dir.path().join("fake-runc");
        write_script(
            &runc,
            "[ \"$1\" = features ] && echo '{\"ociVersionMin\":\"1.0.0\",\"annotations\":{\"x\":\"y\"}}'",
        );
        let toml = dir.path().join("brisk.toml");
        std::fs::write(
            &toml,
            format!("runc_binary = {:?}\n", runc.display().to_string()),
        )
        .unwrap();
        let options = runtime_options_for(&toml);
        let info = runtime_info(Some(options.clone())).unwrap();
        assert_eq!(info.name, RUNTIME_ID);
        assert_eq!(info.options.as_ref(), Some(&options));
        let f = info.features.as_ref().expect("features");
        assert_eq!(f.type_url, FEATURES_TYPE_URL);
        let v: serde_json::Value = serde_json::from_slice(&f.value).unwrap();
        assert_eq!(v["annotations"]["x"], "y");
    }

    #[test]
    fn no_features_when_runc_cannot_tell() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("brisk.toml");
        std::fs::write(&toml, "runc_binary = \"/nonexistent/runc\"\n").unwrap();
        let info = runtime_info(Some(runtime_options_for(&toml))).unwrap();
        assert!(info.features.is_none());
        assert_eq!(info.name, RUNTIME_ID);
    }

    #[test]
    fn a_bad_brisk_toml_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("brisk.toml");
        std::fs::write(&toml, "no_such_key = 1\n").unwrap();
        let err = runtime_info(Some(runtime_options_for(&toml))).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }
}
