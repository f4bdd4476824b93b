//! What containerd writes to the stdin of `shim start` and `shim -info`.
//!
//! Two formats are in use, and the bytes do not say which one they are:
//! - containerd up to 2.2 writes the handler's runtime options as a bare
//!   `google.protobuf.Any`, and nothing at all when the handler has none;
//! - containerd 2.3 and later write a `BootstrapParams` message (instance id,
//!   namespace, log level, addresses, an optional socket directory), with the
//!   runtime options as one of its extensions.
//!
//! Both are protobuf, and an `Any` (fields 1 and 2, both length-delimited)
//! decodes as a `BootstrapParams` whose instance id is the type URL and whose
//! namespace is the packed options. So a decoded `BootstrapParams` is taken
//! as one only when its instance id and namespace are the ones containerd
//! also put on the command line; anything else is read as an `Any`.

use containerd_shim_protos::protobuf::{well_known_types::any::Any, Message};

use crate::protos::bootstrap::BootstrapParams;

/// The runtime options types brisk understands (type URL suffixes).
const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// containerd's own start path reads at most this much; options are small.
pub const MAX_INPUT: u64 = 10 << 20;

/// The decoded stdin.
#[derive(Debug, Default, PartialEq)]
pub struct StartInput {
    /// The bootstrap message of containerd 2.3+, `None` for the older format.
    pub bootstrap: Option<BootstrapParams>,
    /// The handler's runtime options, from either format.
    pub options: Option<Any>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error(
        "stdin ({len} bytes) holds neither containerd 2.3's BootstrapParams for \
         instance {id:?} in namespace {namespace:?} nor a runtime options Any"
    )]
    Undecodable {
        len: usize,
        id: String,
        namespace: String,
    },

    #[error(
        "stdin is not for this shim: read as containerd 2.3's BootstrapParams it is for \
         instance {got_id:?} in namespace {got_namespace:?}, but the flags say instance \
         {id:?} in namespace {namespace:?}; read as runtime options it has type \
         {any_type:?}, which brisk does not take"
    )]
    NotForThisShim {
        got_id: String,
        got_namespace: String,
        id: String,
        namespace: String,
        any_type: String,
    },

    #[error(
        "unsupported runtime options type {0:?}: brisk takes {RUNC_OPTIONS} \
         (runc runtime types) or {RUNTIME_OPTIONS} (ConfigPath, any other runtime type)"
    )]
    UnknownOptions(String),
}

/// Who containerd said, on the command line, the shim is for. Empty fields
/// are unknown (`-info` gets no flags).
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
}

impl StartInput {
    /// Decodes `input` for a shim started with `expected`'s flags.
    pub fn decode(input: &[u8], expected: Expected<'_>) -> Result<Self, InputError> {
        if input.is_empty() {
            return Ok(StartInput::default());
        }
        let bootstrap = BootstrapParams::parse_from_bytes(input).ok();
        let any = Any::parse_from_bytes(input).ok();
        let any_known = any.as_ref().is_some_and(|a| is_known(&a.type_url));
        if let Some(params) = bootstrap
            .as_ref()
            .filter(|p| is_for(p, expected, any_known))
        {
            return Ok(StartInput {
                options: find_options(params),
                bootstrap,
            });
        }
        if let Some(any) = any.as_ref().filter(|_| any_known) {
            return Ok(StartInput {
                bootstrap: None,
                options: Some(any.clone()),
            });
        }
        // Neither reading fits: say what each of them found.
        let names_instance = bootstrap
            .as_ref()
            .filter(|p| !p.instance_id.is_empty() && !p.namespace.is_empty());
        let typed_any = any.filter(|a| !a.type_url.is_empty());
        Err(match (names_instance, typed_any) {
            (Some(p), any) => InputError::NotForThisShim {
                got_id: p.instance_id.clone(),
                got_namespace: p.namespace.clone(),
                id: expected.id.to_string(),
                namespace: expected.namespace.to_string(),
                any_type: any.map(|a| a.type_url).unwrap_or_default(),
            },
            (None, Some(any)) => InputError::UnknownOptions(any.type_url),
            (None, None) => InputError::Undecodable {
                len: input.len(),
                id: expected.id.to_string(),
                namespace: expected.namespace.to_string(),
            },
        })
    }

    /// The log level containerd asked for is debug or more verbose.
    pub fn debug(&self) -> bool {
        self.bootstrap.as_ref().is_some_and(|b| b.log_level <= -4)
    }

    /// The socket directory containerd chose, when it chose one.
    pub fn socket_dir(&self) -> Option<&str> {
        self.bootstrap
            .as_ref()
            .and_then(|b| b.socket_dir.as_deref())
            .filter(|d| !d.is_empty())
    }
}

/// Whether a decoded `BootstrapParams` is one: it names the instance and
/// namespace of the flags. Without flags (the `-info` call) it must name
/// some instance and namespace, and the same bytes must not also read as
/// runtime options of a known type (`any_known`), which is what containerd
/// sends `-info`.
fn is_for(params: &BootstrapParams, expected: Expected<'_>, any_known: bool) -> bool {
    let matches = |got: &str, want: &str| !got.is_empty() && (want.is_empty() || got == want);
    let named =
        matches(&params.instance_id, expected.id) && matches(&params.namespace, expected.namespace);
    let checked = !expected.id.is_empty() && !expected.namespace.is_empty();
    named && (checked || !any_known)
}

fn is_known(type_url: &str) -> bool {
    type_url.ends_with(RUNC_OPTIONS) || type_url.ends_with(RUNTIME_OPTIONS)
}

/// The runtime options among the extensions. Other extensions (containerd
/// may add sections for other consumers) are not brisk's and are skipped.
fn find_options(params: &BootstrapParams) -> Option<Any> {
    params
        .extensions
        .iter()
        .filter_map(|e| e.value.as_ref())
        .find(|a| is_known(&a.type_url))
        .cloned()
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::{protobuf::MessageField, shim::oci::Options as RuncOptions};

    use super::*;
    use crate::protos::bootstrap::Extension;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const NS: &str = "k8s.io";

    fn flags() -> Expected<'static> {
        Expected {
            id: ID,
            namespace: NS,
        }
    }

    fn runc_options(shim_cgroup: &str) -> Any {
        let o = RuncOptions {
            binary_name: "/usr/sbin/runc".into(),
            shim_cgroup: shim_cgroup.into(),
            ..Default::default()
        };
        Any {
            type_url: format!("type.googleapis.com/{RUNC_OPTIONS}"),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    fn params(extensions: Vec<Any>) -> BootstrapParams {
        BootstrapParams {
            instance_id: ID.into(),
            namespace: NS.into(),
            log_level: -4,
            containerd_version: "2.3.4".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            containerd_binary: "/usr/bin/containerd".into(),
            extensions: extensions
                .into_iter()
                .map(|a| Extension {
                    value: MessageField::some(a),
                    ..Default::default()
                })
                .collect(),
            socket_dir: Some("/run/k3s/containerd/s".into()),
            ..Default::default()
        }
    }

    #[test]
    fn empty_stdin_is_no_options() {
        let got = StartInput::decode(&[], flags()).unwrap();
        assert_eq!(got, StartInput::default());
        assert!(!got.debug());
        assert_eq!(got.socket_dir(), None);
    }

    #[test]
    fn legacy_any_of_runc_options() {
        let any = runc_options("/kubepods/shims");
        let got = StartInput::decode(&any.write_to_bytes().unwrap(), flags()).unwrap();
        assert_eq!(got.bootstrap, None);
        assert_eq!(got.options, Some(any));
    }

    #[test]
    fn legacy_any_decodes_as_bootstrap_but_is_not_taken_for_one() {
        // The premise: an Any is a valid BootstrapParams on the wire.
        let bytes = runc_options("").write_to_bytes().unwrap();
        let as_params = BootstrapParams::parse_from_bytes(&bytes).unwrap();
        assert!(as_params.instance_id.ends_with(RUNC_OPTIONS));
        let got = StartInput::decode(&bytes, flags()).unwrap();
        assert_eq!(got.bootstrap, None);
        assert!(got.options.is_some());
    }

    #[test]
    fn bootstrap_params_with_options_extension() {
        let any = runc_options("/shims");
        let other = Any {
            type_url: "containerd.io/cri.v1.PodSandboxConfig".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        let p = params(vec![other, any.clone()]);
        let got = StartInput::decode(&p.write_to_bytes().unwrap(), flags()).unwrap();
        assert_eq!(got.options, Some(any));
        assert!(got.debug());
        assert_eq!(got.socket_dir(), Some("/run/k3s/containerd/s"));
        assert_eq!(got.bootstrap, Some(p));
    }

    #[test]
    fn bootstrap_params_without_options() {
        let mut p = params(vec![]);
        p.socket_dir = None;
        p.log_level = 0;
        let got = StartInput::decode(&p.write_to_bytes().unwrap(), flags()).unwrap();
        assert_eq!(got.options, None);
        assert!(!got.debug());
        assert_eq!(got.socket_dir(), None);
        assert!(got.bootstrap.is_some());
    }

    #[test]
    fn bootstrap_params_for_another_instance_are_not_taken() {
        let p = params(vec![]);
        let other = Expected {
            id: "another",
            namespace: NS,
        };
        let err = StartInput::decode(&p.write_to_bytes().unwrap(), other).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, InputError::NotForThisShim { ref got_id, .. } if got_id == ID),
            "{text}"
        );
        assert!(text.contains("\"another\""), "{text}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = StartInput::decode(b"\xff\xff\xff\xff garbage", flags()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, InputError::Undecodable { len: 12, .. }),
            "{text}"
        );
        assert!(!text.contains("Protobuf"), "{text}");
        assert!(
            text.contains("neither containerd 2.3's BootstrapParams"),
            "{text}"
        );
        assert!(text.contains(ID), "{text}");
    }

    #[test]
    fn unknown_options_type_is_named() {
        let any = Any {
            type_url: "io.example.Options".into(),
            value: vec![],
            ..Default::default()
        };
        let err = StartInput::decode(&any.write_to_bytes().unwrap(), flags()).unwrap_err();
        assert_eq!(err, InputError::UnknownOptions("io.example.Options".into()));
        assert!(err.to_string().contains("runtimeoptions.v1.Options"));
    }

    #[test]
    fn info_without_flags_reads_both_formats() {
        let none = Expected {
            id: "",
            namespace: "",
        };
        let any = runc_options("");
        let legacy = StartInput::decode(&any.write_to_bytes().unwrap(), none).unwrap();
        assert_eq!(legacy.options, Some(any.clone()));
        assert_eq!(legacy.bootstrap, None);
        let p = params(vec![any.clone()]);
        let new = StartInput::decode(&p.write_to_bytes().unwrap(), none).unwrap();
        assert_eq!(new.options, Some(any));
        assert!(new.bootstrap.is_some());
    }
}
