//! A bundle's config.json and an exec's process spec, as containerd (or a
//! broken client) may send them: decoding must never panic, and a spec it
//! accepts is handed on byte for byte.
#![no_main]

use brisk_shim::bundle_spec::{BundleSpec, ExecProcessSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = BundleSpec::parse(data) {
        assert!(!spec.oci_version.is_empty());
        let _ = spec.annotation("io.containerd.brisk.volatile");
    }
    if let Ok(exec) = ExecProcessSpec::parse(data) {
        assert_eq!(exec.json(), data);
    }
});
