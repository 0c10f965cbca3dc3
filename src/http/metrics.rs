//! Prometheus counters, hand-rolled: a handful of labelled counters do not need a framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::store::GroupCommitStats;

/// Request counters by route template and status.
#[derive(Default)]
pub struct Metrics {
    /// Route template, then status. Two levels so that counting looks the route up by `&str`
    /// and allocates only for a route's first answer.
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
}

impl Metrics {
    /// Count one answered request.
    pub fn record(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(by_status) = m.get_mut(route) {
            *by_status.entry(status).or_default() += 1;
        } else {
            m.insert(route.to_owned(), BTreeMap::from([(status, 1)]));
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self, cached_keys: usize, groups: GroupCommitStats) -> String {
        let mut out = String::new();
        out.push_str("# HELP pqkms_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE pqkms_http_requests_total counter\n");
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for (route, by_status) in m.iter() {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            for (status, n) in by_status {
                let _ = writeln!(
                    out,
                    "pqkms_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP pqkms_cached_private_keys Unsealed tenant private keys in memory.\n");
        out.push_str("# TYPE pqkms_cached_private_keys gauge\n");
        let _ = writeln!(out, "pqkms_cached_private_keys {cached_keys}");
        out.push_str("# HELP pqkms_audit_group_commits_total Audit transactions committed by the group-commit writer.\n");
        out.push_str("# TYPE pqkms_audit_group_commits_total counter\n");
        let _ = writeln!(out, "pqkms_audit_group_commits_total {}", groups.commits);
        out.push_str(
            "# HELP pqkms_audit_group_entries_total Audit entries written by those transactions.\n",
        );
        out.push_str("# TYPE pqkms_audit_group_entries_total counter\n");
        let _ = writeln!(out, "pqkms_audit_group_entries_total {}", groups.entries);
        out.push_str(
            "# HELP pqkms_audit_wal_syncs_total WAL syncs that made audit group commits durable (SQLite).\n",
        );
        out.push_str("# TYPE pqkms_audit_wal_syncs_total counter\n");
        let _ = writeln!(out, "pqkms_audit_wal_syncs_total {}", groups.wal_syncs);
        out.push_str(
            "# HELP pqkms_audit_one_statement_commits_total Of the group commits, those written in one statement (PostgreSQL).\n",
        );
        out.push_str("# TYPE pqkms_audit_one_statement_commits_total counter\n");
        let _ = writeln!(
            out,
            "pqkms_audit_one_statement_commits_total {}",
            groups.one_statement_commits
        );
        out
    }
}
