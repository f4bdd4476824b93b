//! What the benchmark commands (`brisk-bench`, `brisk-pressure`,
//! `brisk-demo`) share: the handlers they compare, how a handler is named in
//! a report, and the lines of a markdown table.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use anyhow::{bail, Result};

use crate::{brisk_shim_bin, BRISK_HANDLER, RUNC_HANDLER};

/// CRI handlers to compare, in order; on the command line a comma-separated
/// list such as `runc,brisk` (empty entries are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handlers(pub Vec<String>);

impl Handlers {
    /// The stock runc shim, then brisk.
    pub fn stock_and_brisk() -> Self {
        Handlers(vec![RUNC_HANDLER.into(), BRISK_HANDLER.into()])
    }
}

impl Deref for Handlers {
    type Target = Vec<String>;

    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Handlers {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromStr for Handlers {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Handlers(
            s.split(',')
                .filter(|h| !h.is_empty())
                .map(String::from)
                .collect(),
        ))
    }
}

impl fmt::Display for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Fail unless the brisk shim is built, when one of `handlers` is brisk.
pub fn require_shim_built<'a>(handlers: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let bin = brisk_shim_bin();
    if handlers.into_iter().any(|h| h == BRISK_HANDLER) && !bin.is_file() {
        bail!(
            "brisk shim {} not built (cargo build --release -p brisk-shim)",
            bin.display()
        );
    }
    Ok(())
}

/// The machine's load average over 1, 5 and 15 minutes, as a report
/// prints it beside figures taken on a noisy 2-core machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A handler as a report names it: the stock shim is `runc (stock)`.
pub fn label(handler: &str) -> &str {
    if handler == RUNC_HANDLER {
        "runc (stock)"
    } else {
        handler
    }
}

/// `b / a` as `1.23x` with `decimals` decimals, or `-`.
pub fn ratio(a: f64, b: f64, decimals: usize) -> String {
    if a.is_finite() && b.is_finite() && a > 0.0 {
        format!("{:.decimals$}x", b / a)
    } else {
        "-".into()
    }
}

/// A markdown table row: `| a | b | c |`.
pub fn row<T: fmt::Display>(cells: impl IntoIterator<Item = T>) -> String {
    let mut s = String::from("|");
    for c in cells {
        s.push_str(&format!(" {c} |"));
    }
    s
}

/// The line under a markdown table's header: one letter of `align` a
/// column, `l` left-aligned (`---`), anything else right-aligned (`---:`).
pub fn separator(align: &str) -> String {
    let mut s = String::from("|");
    for a in align.chars() {
        s.push_str(if a == 'l' { "---|" } else { "---:|" });
    }
    s
}

/// Header and separator of a table comparing `handlers`: a left column
/// named `first`, one right-aligned column a handler and, with two
/// handlers, their ratio `b / a`.
pub fn comparison_header(first: &str, handlers: &[String]) -> [String; 2] {
    let mut cells: Vec<&str> = vec![first];
    cells.extend(handlers.iter().map(|h| label(h)));
    let ratio_column;
    if let [a, b] = handlers {
        ratio_column = format!("{} / {}", label(b), label(a));
        cells.push(&ratio_column);
    }
    let align = format!("l{}", "r".repeat(cells.len() - 1));
    [row(cells), separator(&align)]
}

/// The lines of containerd's log and of the fault log (empty where there
/// is none) that name a container id found in `leaks` (at most 60 an id),
/// then containerd's lines on a dead shim's cleanup that went wrong (in the
/// words of 1.6/1.7 and of 2.x): what a leak found in CI is read from.
pub fn leak_evidence(leaks: &[String], containerd_log: &str, fault_log: &str) -> Vec<String> {
    const PER_ID: usize = 60;
    let is_hex_id = |w: &str| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit());
    let ids: BTreeSet<&str> = leaks
        .iter()
        .flat_map(|l| l.split(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| is_hex_id(w))
        .collect();
    let cut = |l: &str| l.chars().take(400).collect::<String>();
    let mut out = Vec::new();
    for id in &ids {
        let naming = |log: &'static str, text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains(id))
                .map(|l| format!("{log}: {}", cut(l)))
                .collect()
        };
        let mut lines = naming("faults", fault_log);
        lines.extend(naming("containerd", containerd_log));
        let skip = lines.len().saturating_sub(PER_ID);
        out.push(format!(
            "--- {id}: {} lines, the last {PER_ID} ---",
            lines.len()
        ));
        out.extend(lines.into_iter().skip(skip));
    }
    out.extend(
        containerd_log
            .lines()
            .filter(|l| {
                l.contains("warnings while cleaning up dead shim")
                    || l.contains("failed to delete dead shim")
                    || l.contains("cleanup warnings")
                    || l.contains(r#"msg="failed to delete""#)
                    || l.contains("failed to clean up after shim disconnected")
            })
            // Whole: a cleanup's warnings are one line of many.
            .map(|l| format!("containerd: {l}")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_parse_and_print() {
        let h: Handlers = "runc,,brisk,".parse().unwrap();
        assert_eq!(h, Handlers::stock_and_brisk());
        assert_eq!(h.to_string(), "runc,brisk");
        assert!("".parse::<Handlers>().unwrap().is_empty());
    }

    #[test]
    fn tables() {
        let [head, sep] = comparison_header("metric", &Handlers::stock_and_brisk());
        assert_eq!(
            head,
            "| metric | runc (stock) | brisk | brisk / runc (stock) |"
        );
        assert_eq!(sep, "|---|---:|---:|---:|");
        let [head, sep] = comparison_header("metric", &["brisk".to_string()]);
        assert_eq!(head, "| metric | brisk |");
        assert_eq!(sep, "|---|---:|");
        assert_eq!(separator("rlr"), "|---:|---|---:|");
        assert_eq!(row(["a", "1.00"]), "| a | 1.00 |");
        assert_eq!(ratio(2.0, 1.0, 2), "0.50x");
        assert_eq!(ratio(3.0, 1.0, 3), "0.333x");
        assert_eq!(ratio(0.0, 1.0, 2), "-");
    }

    #[test]
    fn a_leak_is_shown_with_what_the_logs_say_of_its_container() {
        let id = "530f6c00b77386393bd4cb3636ca7364d683481f186301088320b7c82020350e";
        let leaks = vec![format!(
            "leaks:\n  cgroup left: /sys/fs/cgroup/cpu/brisk-it-1-0/{id}\n  runc state left: /run/containerd/brisk/k8s.io/{id}"
        )];
        let containerd = [
            format!(r#"time="1" level=info msg="started" id={id}"#),
            r#"time="2" level=info msg="other" id=abc"#.to_string(),
            r#"time="3" level=warning msg="warnings while cleaning up dead shim" id=x warnings="runc delete failed""#.to_string(),
        ]
        .join("\n");
        let faults = format!("+1.0 s s0t1: created {id}\n+2.0 s s0t2: created other");
        let e = leak_evidence(&leaks, &containerd, &faults);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[0].starts_with(&format!("--- {id}: 2 lines")));
        assert!(e[1].starts_with("faults: +1.0 s s0t1"));
        assert!(e[2].contains(r#"msg="started""#));
        assert!(e[3].contains("runc delete failed"));
    }
}
