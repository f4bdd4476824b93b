//! The W3C trace context (`traceparent`) containerd puts in a request's
//! ttrpc metadata.
//!
//! containerd 2.x calls its shims through otelttrpc's client interceptor,
//! which writes the caller's span as a `traceparent` entry (lower-case key)
//! when containerd's OTLP tracing plugin is configured. CRI's gRPC server
//! continues the trace kubelet (or any client) sent, so the trace id in a
//! shim request is the one of the CRI call that caused it. The shim does not
//! trace: it only logs that id with the request's lines (`task_service::ttrpc`
//! runs each request in a span carrying it), so an operator can follow one
//! CRI call from containerd's log into the shim's.
//!
//! The header is parsed strictly (W3C Trace Context, level 1): anything
//! malformed is ignored, never an error, and costs nothing more than the
//! check. Parsing allocates nothing: the ids are kept as integers.

use std::{collections::HashMap, fmt};

/// The metadata key otelttrpc writes (ttrpc lower-cases keys).
pub const TRACEPARENT: &str = "traceparent";

/// A 16-byte trace id, never zero; shown as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(u128);

/// An 8-byte span (parent) id, never zero; shown as 16 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(u64);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a valid `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span: containerd's span of the ttrpc call.
    pub span_id: SpanId,
    pub sampled: bool,
}

/// The trace context of a request's metadata: exactly one valid
/// `traceparent` value, else None (absent, repeated or malformed; W3C says
/// to ignore a header given twice).
pub fn from_metadata(metadata: &HashMap<String, Vec<String>>) -> Option<TraceParent> {
    match metadata.get(TRACEPARENT)?.as_slice() {
        [one] => parse(one),
        _ => None,
    }
}

/// Parses `version-traceid-parentid-flags`: two, 32, 16 and two lower-case
/// hex digits. Version `ff` is invalid; version `00` has exactly these four
/// fields, a later version may add more after a `-` (and they are ignored).
/// All-zero ids are invalid.
pub fn parse(header: &str) -> Option<TraceParent> {
    const LEN: usize = 2 + 1 + 32 + 1 + 16 + 1 + 2;
    let b = header.as_bytes();
    if b.len() < LEN {
        return None;
    }
    let version = hex(&b[0..2])? as u8;
    match version {
        0xff => return None,
        0x00 if b.len() != LEN => return None,
        _ if b.len() > LEN && b[LEN] != b'-' => return None,
        _ => {}
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = hex(&b[3..35])?;
    let span_id = hex(&b[36..52])? as u64;
    let flags = hex(&b[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(TraceParent {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        sampled: flags & 1 == 1,
    })
}

/// The value of at most 32 lower-case hex digits; None on any other byte
/// (upper case included, as the spec requires; `from_str_radix` alone would
/// take upper case and a leading `+`).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_gives_its_ids_back_unchanged() {
        let tp = parse(GOOD).unwrap();
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id.to_string(), "00f067aa0ba902b7");
        assert!(tp.sampled);
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn leading_zeros_are_kept_in_the_display() {
        let tp = parse("00-00000000000000000000000000000001-0000000000000002-01").unwrap();
        assert_eq!(tp.trace_id.to_string(), "00000000000000000000000000000001");
        assert_eq!(tp.span_id.to_string(), "0000000000000002");
    }

    #[test]
    fn zero_ids_are_invalid() {
        assert!(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none());
    }

    #[test]
    fn upper_case_and_other_bytes_are_invalid() {
        assert!(parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01").is_none());
        assert!(parse("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01").is_none());
        assert!(parse("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01").is_none());
        // Multi-byte UTF-8 where a digit should be.
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn bad_lengths_are_invalid() {
        assert!(parse("").is_none());
        assert!(parse(&GOOD[..GOOD.len() - 1]).is_none());
        assert!(parse(&format!("{GOOD}-")).is_none());
        assert!(parse(&format!(" {GOOD}")).is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn version_ff_is_invalid_and_later_versions_may_grow() {
        assert!(parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse(later).is_some());
        assert!(parse(&format!("{later}-what-comes-next")).is_some());
        assert!(parse(&format!("{later}x")).is_none());
        // Version 00 has nothing after the flags.
        assert!(parse(&format!("{GOOD}-more")).is_none());
    }

    #[test]
    fn metadata_needs_exactly_one_valid_value() {
        let mut md = HashMap::new();
        assert!(from_metadata(&md).is_none());
        md.insert("traceparent".to_string(), vec![GOOD.to_string()]);
        assert_eq!(from_metadata(&md), parse(GOOD));
        md.insert(
            "traceparent".to_string(),
            vec![GOOD.to_string(), GOOD.to_string()],
        );
        assert!(from_metadata(&md).is_none());
        md.insert("traceparent".to_string(), vec!["garbage".to_string()]);
        assert!(from_metadata(&md).is_none());
        md.insert("traceparent".to_string(), vec![]);
        assert!(from_metadata(&md).is_none());
    }
}
