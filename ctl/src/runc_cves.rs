//! Which known runc container escapes a runc version predates, for
//! `doctor`. Only the upstream version is known here: distributions
//! backport fixes into older versions (Debian's 1.1.5+ds1 may carry them),
//! so a match is a warning to check the vendor's advisory, not a failure.

/// A runc release as `runc --version` names it: `1.2.8`, `1.4.0-rc.3`,
/// `1.1.5+ds1` (build metadata ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuncVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// The `rc.N` of a release candidate; None for a release.
    pub rc: Option<u32>,
}

impl RuncVersion {
    /// Parses the output of `runc --version` (its `runc version X` line) or
    /// a bare version.
    pub fn parse(text: &str) -> Option<RuncVersion> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("runc version "))
            .unwrap_or(text.trim());
        let v = line.split_whitespace().next()?;
        let v = v.strip_prefix('v').unwrap_or(v);
        let v = v.split('+').next()?;
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let mut nums = core.split('.').map(|n| n.parse::<u32>().ok());
        let major = nums.next()??;
        let minor = nums.next()??;
        let patch = nums.next().unwrap_or(Some(0))?;
        // Any other pre-release ("dev", "rc93") counts as before the release;
        // rc.N and rcN as the number N.
        let rc = pre.map(|p| {
            let digits: String = p
                .trim_start_matches("rc")
                .trim_start_matches('.')
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().unwrap_or(0)
        });
        Some(RuncVersion {
            major,
            minor,
            patch,
            rc,
        })
    }

    /// Ordering key: a release candidate sorts before its release.
    fn key(&self) -> (u32, u32, u32, u32) {
        (
            self.major,
            self.minor,
            self.patch,
            self.rc.unwrap_or(u32::MAX),
        )
    }

    fn at_least(&self, other: &str) -> bool {
        self.key() >= RuncVersion::parse(other).expect("a fixed version").key()
    }
}

/// One advisory: its CVEs and the first fixed version of each release line
/// (`major.minor`) it was fixed on; lines newer than all of them are fixed.
struct Advisory {
    cves: &'static str,
    fixed: &'static [&'static str],
}

/// From runc's GitHub security advisories: GHSA-xr7r-f8xq-vfvv (fixed in
/// 1.1.12), and GHSA-9493-h29p-rfm2, GHSA-qw9x-cqr3-wc7r,
/// GHSA-cgrx-mc8f-2prm (published together, fixed in 1.2.8, 1.3.3 and
/// 1.4.0-rc.3).
const ADVISORIES: &[Advisory] = &[
    Advisory {
        cves: "CVE-2024-21626",
        fixed: &["1.1.12"],
    },
    Advisory {
        cves: "CVE-2025-31133, CVE-2025-52565, CVE-2025-52881",
        fixed: &["1.2.8", "1.3.3", "1.4.0-rc.3"],
    },
];

impl Advisory {
    fn affects(&self, v: &RuncVersion) -> bool {
        let fixes: Vec<RuncVersion> = self
            .fixed
            .iter()
            .map(|f| RuncVersion::parse(f).expect("a fixed version"))
            .collect();
        let newest = fixes.iter().map(|f| (f.major, f.minor)).max().unwrap();
        if (v.major, v.minor) > newest {
            return false;
        }
        match fixes
            .iter()
            .zip(self.fixed)
            .find(|(f, _)| (f.major, f.minor) == (v.major, v.minor))
        {
            // On a line that got the fix: fixed from that version on.
            Some((_, text)) => !v.at_least(text),
            // A line older than the newest fixed one that got no fix of its
            // own (out of support): affected.
            None => true,
        }
    }
}

/// The CVEs `v` predates the upstream fixes of.
pub fn missing_fixes(v: &RuncVersion) -> Vec<&'static str> {
    ADVISORIES
        .iter()
        .filter(|a| a.affects(v))
        .map(|a| a.cves)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(v: &str) -> Vec<&'static str> {
        missing_fixes(&RuncVersion::parse(v).unwrap_or_else(|| panic!("parse {v}")))
    }

    const OLD: &str = "CVE-2024-21626";
    const NEW: &str = "CVE-2025-31133, CVE-2025-52565, CVE-2025-52881";

    #[test]
    fn parses_runc_version_output() {
        let out = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        assert_eq!(
            RuncVersion::parse(out),
            Some(RuncVersion {
                major: 1,
                minor: 1,
                patch: 5,
                rc: None
            })
        );
        assert_eq!(RuncVersion::parse("1.4.0-rc.3").unwrap().rc, Some(3));
        assert_eq!(RuncVersion::parse("v1.0.0-rc93").unwrap().rc, Some(93));
        assert_eq!(RuncVersion::parse("runc version unknown"), None);
        assert_eq!(RuncVersion::parse(""), None);
    }

    #[test]
    fn versions_before_each_fix_are_named() {
        assert_eq!(missing("1.1.5+ds1"), [OLD, NEW]);
        assert_eq!(missing("1.0.0-rc93"), [OLD, NEW]);
        assert_eq!(missing("1.1.11"), [OLD, NEW]);
        assert_eq!(missing("1.1.12"), [NEW]);
        assert_eq!(missing("1.1.15"), [NEW]);
        assert_eq!(missing("1.2.0-rc.1"), [NEW]);
        assert_eq!(missing("1.2.7"), [NEW]);
        assert_eq!(missing("1.3.0"), [NEW]);
        assert_eq!(missing("1.3.2"), [NEW]);
        assert_eq!(missing("1.4.0-rc.2"), [NEW]);
    }

    #[test]
    fn fixed_versions_pass() {
        for v in [
            "1.2.8",
            "1.2.9",
            "1.3.3",
            "1.3.10",
            "1.4.0-rc.3",
            "1.4.0",
            "1.4.2",
            "1.5.0",
            "2.0.0",
        ] {
            assert!(missing(v).is_empty(), "{v}: {:?}", missing(v));
        }
    }
}
