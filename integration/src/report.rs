//! What the benchmark commands (`brisk-bench`, `brisk-pressure`,
//! `brisk-demo`) share: the handlers they compare.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use crate::{BRISK_HANDLER, RUNC_HANDLER};

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
}
