//! The tamper-evident audit chain.
//!
//! Every entry stores the hash of the one before it:
//!
//! ```text
//! hash_n = SHA-256( "pqkms/v1/audit" || u64(seq) || i64(time_ms) || field(principal)
//!                   || field(tenant) || field(key) || i64-or-absent(version) || field(operation)
//!                   || field(outcome) || field(request_id) || field(context_hash)
//!                   || field(detail) || prev_hash )
//! field(s)  = 0x01 || u32(len) || bytes   (0x00 if absent);  integers big-endian
//! prev_hash of entry 1 = 32 zero bytes; hashes are stored as 64 hex digits
//! ```
//!
//! [`verify_chain`] recomputes every hash and link and names the first entry that does not fit:
//! an edited row fails its own hash, a deleted row breaks the next link (and the sequence), a
//! reordered pair fails both. The `audit_head` row catches a truncated tail. The head hash can be
//! copied somewhere else (a ticket, a WORM bucket) to anchor the chain against a database admin.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash of "no previous entry".
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a handler records; the store assigns `seq`, `prev_hash` and `hash` inside the transaction.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Token id of the caller (`anonymous` is never recorded: unauthenticated calls are not audited).
    pub principal: String,
    /// Tenant name the request named.
    pub tenant: Option<String>,
    /// Key name.
    pub key: Option<String>,
    /// Key version used.
    pub version: Option<i64>,
    /// Operation, e.g. `data_key.generate`.
    pub operation: String,
    /// `ok`, `failed`, `denied`.
    pub outcome: String,
    /// Request id (also returned in the `x-request-id` header).
    pub request_id: String,
    /// Hex SHA-256 digest of the encryption context, when there was one.
    pub context_hash: Option<String>,
    /// Non-secret facts, e.g. a destruction receipt (JSON text).
    pub detail: Option<String>,
}

/// A stored audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// Token id of the caller.
    pub principal: String,
    /// Tenant name.
    pub tenant: Option<String>,
    /// Key name.
    pub key: Option<String>,
    /// Key version.
    pub version: Option<i64>,
    /// Operation.
    pub operation: String,
    /// Outcome.
    pub outcome: String,
    /// Request id.
    pub request_id: String,
    /// Context digest.
    pub context_hash: Option<String>,
    /// Non-secret facts, e.g. a destruction receipt (JSON text).
    pub detail: Option<String>,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// Filter for reading the log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this tenant's entries.
    pub tenant: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Entries at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Entries before (Unix ms).
    pub until_ms: Option<i64>,
    /// Entries with `seq` greater than this (paging cursor).
    pub after_seq: i64,
    /// Page size.
    pub limit: i64,
}

impl NewAuditEntry {
    /// Seal this entry into the chain after `prev_seq` / `prev_hash`.
    pub fn chain(self, prev_seq: i64, prev_hash: &str) -> AuditEntry {
        let mut entry = AuditEntry {
            seq: prev_seq + 1,
            time_ms: self.time_ms,
            principal: self.principal,
            tenant: self.tenant,
            key: self.key,
            version: self.version,
            operation: self.operation,
            outcome: self.outcome,
            request_id: self.request_id,
            context_hash: self.context_hash,
            detail: self.detail,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }
}

impl AuditEntry {
    /// The entry as a handler recorded it, out of the chain again: to seal it after another head
    /// when the one it was chained after turned out not to be the chain's newest.
    pub fn unchained(self) -> NewAuditEntry {
        NewAuditEntry {
            time_ms: self.time_ms,
            principal: self.principal,
            tenant: self.tenant,
            key: self.key,
            version: self.version,
            operation: self.operation,
            outcome: self.outcome,
            request_id: self.request_id,
            context_hash: self.context_hash,
            detail: self.detail,
        }
    }

    /// The hash this entry should have, from its fields and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        fn field(h: &mut Sha256, s: Option<&str>) {
            match s {
                None => h.update([0u8]),
                Some(s) => {
                    h.update([1u8]);
                    h.update((s.len() as u32).to_be_bytes());
                    h.update(s.as_bytes());
                }
            }
        }
        let mut h = Sha256::new();
        h.update(b"pqkms/v1/audit");
        h.update(self.seq.to_be_bytes());
        h.update(self.time_ms.to_be_bytes());
        field(&mut h, Some(&self.principal));
        field(&mut h, self.tenant.as_deref());
        field(&mut h, self.key.as_deref());
        match self.version {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update(v.to_be_bytes());
            }
        }
        field(&mut h, Some(&self.operation));
        field(&mut h, Some(&self.outcome));
        field(&mut h, Some(&self.request_id));
        field(&mut h, self.context_hash.as_deref());
        field(&mut h, self.detail.as_deref());
        h.update(self.prev_hash.as_bytes());
        crate::hex_lower(&h.finalize())
    }
}

/// Result of checking the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verification {
    /// Every entry and link checks out, and the head row matches the last entry.
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// Hash of the newest entry (anchor it elsewhere to detect a rewritten chain).
    pub head: String,
    /// Sequence number of the first entry that does not fit, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    /// What is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Incremental chain checker: feed entries in `seq` order, then [`ChainVerifier::finish`].
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    checked: i64,
    failure: Option<(i64, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
            checked: 0,
            failure: None,
        }
    }
}

impl ChainVerifier {
    /// Check the next entry. Stops recording after the first failure.
    pub fn push(&mut self, e: &AuditEntry) {
        if self.failure.is_some() {
            return;
        }
        self.checked += 1;
        let problem = if e.seq != self.expected_seq {
            Some(format!(
                "expected entry {}, found {}",
                self.expected_seq, e.seq
            ))
        } else if e.prev_hash != self.prev_hash {
            Some("link to the previous entry is broken".to_owned())
        } else if e.compute_hash() != e.hash {
            Some("entry content does not match its hash".to_owned())
        } else {
            None
        };
        match problem {
            Some(p) => self.failure = Some((self.expected_seq.min(e.seq), p)),
            None => {
                self.expected_seq += 1;
                self.prev_hash = e.hash.clone();
            }
        }
    }

    /// Whether a failure has been found (callers may stop reading).
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Compare with the head row and produce the verdict.
    pub fn finish(mut self, head_seq: i64, head_hash: &str) -> Verification {
        if self.failure.is_none()
            && (head_seq != self.expected_seq - 1 || head_hash != self.prev_hash)
        {
            self.failure = Some((
                self.expected_seq,
                format!(
                    "chain ends at entry {} but the head records entry {head_seq}",
                    self.expected_seq - 1
                ),
            ));
        }
        let (first_bad_seq, problem) = match self.failure {
            Some((seq, p)) => (Some(seq), Some(p)),
            None => (None, None),
        };
        Verification {
            ok: first_bad_seq.is_none(),
            entries: self.checked,
            head: head_hash.to_owned(),
            first_bad_seq,
            problem,
        }
    }
}

/// Read the whole chain from `store` in pages and verify it.
pub async fn verify_chain(
    store: &dyn crate::store::Store,
) -> crate::store::StoreResult<Verification> {
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut verifier = ChainVerifier::default();
    let mut query = AuditQuery {
        limit: 2000,
        ..AuditQuery::default()
    };
    loop {
        let page = store.audit_entries(&query).await?;
        // Entries appended after the head was read are not part of this verification.
        for e in page.iter().take_while(|e| e.seq <= head_seq) {
            verifier.push(e);
        }
        match page.last() {
            Some(last)
                if !verifier.failed()
                    && page.len() as i64 == query.limit
                    && last.seq < head_seq =>
            {
                query.after_seq = last.seq;
            }
            _ => break,
        }
    }
    Ok(verifier.finish(head_seq, &head_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i64) -> NewAuditEntry {
        NewAuditEntry {
            time_ms: 1_700_000_000_000 + i,
            principal: "tok".into(),
            tenant: Some("acme".into()),
            key: None,
            version: Some(i),
            operation: "data_key.generate".into(),
            outcome: "ok".into(),
            request_id: format!("r{i}"),
            context_hash: None,
            detail: None,
        }
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let (seq, prev) = out
                .last()
                .map_or((0, GENESIS_HASH.to_owned()), |e| (e.seq, e.hash.clone()));
            out.push(entry(i).chain(seq, &prev));
        }
        out
    }

    fn verify(entries: &[AuditEntry], head: &AuditEntry) -> Verification {
        let mut v = ChainVerifier::default();
        entries.iter().for_each(|e| v.push(e));
        v.finish(head.seq, &head.hash)
    }

    #[test]
    fn intact_chain_verifies_and_each_kind_of_tampering_is_located() {
        let good = chain(6);
        let head = good.last().unwrap().clone();
        assert!(verify(&good, &head).ok);

        let mut edited = good.clone();
        edited[2].outcome = "failed".into();
        assert_eq!(verify(&edited, &head).first_bad_seq, Some(3));

        let mut removed = good.clone();
        removed.remove(3);
        assert_eq!(verify(&removed, &head).first_bad_seq, Some(4));

        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert_eq!(verify(&swapped, &head).first_bad_seq, Some(2));

        let truncated = &good[..5];
        assert_eq!(verify(truncated, &head).first_bad_seq, Some(6));

        // Absent and empty fields hash differently.
        let mut a = good[0].clone();
        a.key = Some(String::new());
        assert_ne!(a.compute_hash(), good[0].hash);
    }
}
