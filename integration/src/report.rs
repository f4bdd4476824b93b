//! What the benchmark commands (`brisk-bench`, `brisk-pressure`,
//! `brisk-demo`) share: the handlers they compare, how a handler is named in
//! a report, and the lines of a markdown table.

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
}
