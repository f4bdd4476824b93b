//! Container and exec ids, checked as containerd checks them
//! (`pkg/identifiers`: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76
//! characters) before they become path components: bundle files, pid files,
//! runc's state directory. Such an id has no `/`, is never `.` or `..`, and
//! starts with neither a dot nor a dash.

use crate::error::{Result, ShimError};

/// containerd's limit on an identifier's length.
pub const MAX_LEN: usize = 76;

/// Refuses `id` unless it is a containerd identifier; `what` names it in
/// the error ("container id", "exec id").
pub fn validate(what: &str, id: &str) -> Result<()> {
    let bad = |why: String| Err(ShimError::InvalidArgument(format!("{what} {id:?}: {why}")));
    if id.is_empty() {
        return bad("must not be empty".into());
    }
    if id.len() > MAX_LEN {
        return bad(format!(
            "is {} characters, over the limit of {MAX_LEN}",
            id.len()
        ));
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = id.as_bytes();
    let well_formed = bytes.iter().all(|&b| alnum(b) || sep(b))
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && !bytes.windows(2).any(|w| sep(w[0]) && sep(w[1]));
    if !well_formed {
        return bad("must be letters and digits, with single '.', '_' or '-' between them".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_identifiers_pass_and_the_rest_is_named() {
        let hex = "0123456789abcdef".repeat(4);
        let max = "a".repeat(MAX_LEN);
        for ok in ["a", "A9", "a.b", "a_b-c.d", hex.as_str(), max.as_str(), "1"] {
            validate("exec id", ok).unwrap();
        }
        let long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/a",
            ".a",
            "a.",
            "-a",
            "a-",
            "a..b",
            "a._b",
            "a b",
            "a\n",
            "é",
            "a:b",
            long.as_str(),
        ] {
            let e = validate("exec id", bad).unwrap_err();
            assert!(matches!(e, ShimError::InvalidArgument(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("exec id"), "{e}");
        }
        let e = validate("container id", &long).unwrap_err().to_string();
        assert!(e.contains("77 characters"), "{e}");
    }
}
