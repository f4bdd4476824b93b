//! brisk.toml as an operator might mistype it: parsing must never panic.
#![no_main]

use std::path::Path;

use brisk_shim::config::FileConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = FileConfig::parse(text, Path::new("fuzz.toml"));
    }
});
