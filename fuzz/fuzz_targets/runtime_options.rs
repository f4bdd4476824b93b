//! The `options` of a Create request, as containerd sends them: decoding
//! must never panic, whatever the type URL and bytes.
#![no_main]

use brisk_shim::config::{decode_runtime_options, RuntimeConfig};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use libfuzzer_sys::fuzz_target;

const TYPE_URLS: [&str; 3] = [
    "containerd.runc.v1.Options",
    "runtimeoptions.v1.Options",
    "example.com/unknown",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let _ = decode_runtime_options(value);
    let any = Any {
        type_url: TYPE_URLS[selector as usize % TYPE_URLS.len()].to_string(),
        value: value.to_vec(),
        ..Default::default()
    };
    let _ = RuntimeConfig::from_create_options("fuzz", Some(&any));
});
