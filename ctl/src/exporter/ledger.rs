//! Keeps the node's counters monotonic while shims come and go.
//!
//! A node counter is a sum over shims, and a shim's counts leave with it
//! when its pod ends. Summing only the live shims would make the node's
//! counters fall at every pod end, which Prometheus's `rate()` and
//! `increase()` take for a counter reset and over-count. So a shim that is
//! gone leaves its last read counts behind in `departed`, and a live shim
//! that missed one read (a timeout) counts with the figures it last gave.
//! What a shim counted between its last read and its end is lost: the
//! node's counters may run a little low, never backwards.

use std::{collections::BTreeMap, path::PathBuf};

use brisk_shim::metrics::Snapshot;

use super::{shims::Read1, Node};

#[derive(Debug, Default)]
pub struct Ledger {
    /// The last snapshot of each shim read, by its figures socket.
    last: BTreeMap<PathBuf, Snapshot>,
    /// The counts of shims that are gone (no pods, no shims).
    departed: Node,
}

impl Ledger {
    /// The node's figures for this scrape's reads.
    pub(super) fn node(&mut self, reads: Vec<Read1>) -> Node {
        self.node_with(reads, |socket, pid| {
            socket.exists() && std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
    }

    /// As [`Ledger::node`], with `alive(socket, pid)` telling whether a shim
    /// that was not read this time is still there.
    fn node_with(&mut self, reads: Vec<Read1>, alive: impl Fn(&PathBuf, u32) -> bool) -> Node {
        let mut now = BTreeMap::new();
        let mut unreadable = 0;
        for r in reads {
            match r {
                Read1::Read { socket, snapshot } => {
                    now.insert(socket, *snapshot);
                }
                Read1::Failed { .. } => unreadable += 1,
            }
        }
        let mut carried = Vec::new();
        for (socket, last) in std::mem::take(&mut self.last) {
            if now.contains_key(&socket) {
                continue;
            }
            if alive(&socket, last.pid) {
                carried.push((socket, last));
            } else {
                self.departed.add_counts(&last);
            }
        }
        let mut node = self.departed.clone();
        node.unreadable_now = unreadable;
        for (socket, last) in carried {
            node.add_counts(&last);
            self.last.insert(socket, last);
        }
        for (socket, s) in now {
            node.add(s.clone());
            self.last.insert(socket, s);
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pid: u32, exits: u64) -> Snapshot {
        Snapshot {
            pid,
            exits_published: exits,
            namespace: "k8s.io".into(),
            id: format!("pod{pid}"),
            ..Default::default()
        }
    }

    fn read(socket: &str, s: Snapshot) -> Read1 {
        Read1::Read {
            socket: socket.into(),
            snapshot: Box::new(s),
        }
    }

    #[test]
    fn counts_of_a_shim_that_ended_stay_in_the_node_counters() {
        let mut l = Ledger::default();
        let n = l.node_with(
            vec![read("/a", snap(1, 5)), read("/b", snap(2, 7))],
            |_, _| true,
        );
        assert_eq!((n.shims, n.exits_published), (2, 12));
        // Shim 1 ended; shim 2 went on.
        let n = l.node_with(vec![read("/b", snap(2, 9))], |_, _| false);
        assert_eq!((n.shims, n.exits_published, n.pods.len()), (1, 14, 1));
        // And stays counted once, scrape after scrape.
        let n = l.node_with(vec![read("/b", snap(2, 9))], |_, _| false);
        assert_eq!(n.exits_published, 14);
    }

    #[test]
    fn a_live_shim_that_missed_a_read_counts_with_its_last_figures() {
        let mut l = Ledger::default();
        l.node_with(vec![read("/a", snap(1, 5))], |_, _| true);
        let missed = Read1::Failed {
            socket: "/a".into(),
            reason: "no answer".into(),
        };
        let n = l.node_with(vec![missed], |_, _| true);
        assert_eq!((n.shims, n.unreadable_now, n.exits_published), (0, 1, 5));
        // When it answers again it is not counted twice.
        let n = l.node_with(vec![read("/a", snap(1, 6))], |_, _| true);
        assert_eq!(n.exits_published, 6);
    }
}
