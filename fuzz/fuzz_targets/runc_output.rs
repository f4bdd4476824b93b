//! What runc prints (state, ps, events --stats, its JSON log): decoding
//! must never panic, whatever a runc version or a broken runc prints.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = runc_wrapper::parse_state(data);
    let _ = runc_wrapper::parse_ps(data);
    let _ = runc_wrapper::parse_stats_event(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = runc_wrapper::parse_log_errors(text);
    }
});
