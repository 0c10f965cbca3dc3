//! [`Directory`]: the rows the key-use hot path reads (tokens, tenants, keys, versions), kept in
//! memory so a data-key request does not wait on four database round trips.
//!
//! Cached rows are *hints*, never authority: every key use commits its audit entry together with
//! a [`UseGuard`] — the token and key state the request decided on — and the group commit checks,
//! inside the audit transaction, that they still hold (token not revoked, key and version states
//! unchanged). If another node revoked the token or changed the key meanwhile, the entry is not
//! written, nothing is released, and the request runs again on fresh rows ([`Read::Fresh`]). So a
//! revocation, disable, rotation or destruction applies at the next request on every node, as it
//! did before there was a cache. Admin routes always read fresh.

use std::sync::{Arc, Mutex};

use super::{KeyRow, Store, StoreResult, TenantRow, TokenRow, UseGuard, VersionRow};
use crate::bounded::{Bounded, lock};

/// Whether a lookup may answer from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// From memory when present (key-use routes, whose commit re-checks what matters).
    Cached,
    /// From the database, refreshing memory (admin routes; the retry after a stale guard).
    Fresh,
}

/// Read-through caches of store rows. Misses and negative answers always go to the database.
pub struct Directory {
    store: Arc<dyn Store>,
    tokens: Mutex<Bounded<String, TokenRow>>,
    tenants: Mutex<Bounded<String, TenantRow>>,
    keys: Mutex<Bounded<(String, String), KeyRow>>,
    versions: Mutex<Bounded<String, Vec<VersionRow>>>,
}

impl Directory {
    /// A directory over `store` holding up to `capacity` rows of each kind.
    pub fn new(store: Arc<dyn Store>, capacity: usize) -> Self {
        Directory {
            store,
            tokens: Mutex::new(Bounded::new(capacity)),
            tenants: Mutex::new(Bounded::new(capacity)),
            keys: Mutex::new(Bounded::new(capacity)),
            versions: Mutex::new(Bounded::new(capacity)),
        }
    }

    /// The token with this hash.
    pub async fn token(&self, hash: &str, read: Read) -> StoreResult<Option<Arc<TokenRow>>> {
        if read == Read::Cached
            && let Some(row) = lock(&self.tokens).get(hash)
        {
            return Ok(Some(row));
        }
        let Some(row) = self.store.token_by_hash(hash).await?.map(Arc::new) else {
            lock(&self.tokens).remove(hash);
            return Ok(None);
        };
        lock(&self.tokens).insert(hash.to_owned(), row.clone());
        Ok(Some(row))
    }

    /// The tenant with this name.
    pub async fn tenant(&self, name: &str, read: Read) -> StoreResult<Option<Arc<TenantRow>>> {
        if read == Read::Cached
            && let Some(row) = lock(&self.tenants).get(name)
        {
            return Ok(Some(row));
        }
        let Some(row) = self.store.tenant_by_name(name).await?.map(Arc::new) else {
            lock(&self.tenants).remove(name);
            return Ok(None);
        };
        lock(&self.tenants).insert(name.to_owned(), row.clone());
        Ok(Some(row))
    }

    /// The key `name` of a tenant.
    pub async fn key(
        &self,
        tenant_id: &str,
        name: &str,
        read: Read,
    ) -> StoreResult<Option<Arc<KeyRow>>> {
        let k = (tenant_id.to_owned(), name.to_owned());
        if read == Read::Cached
            && let Some(row) = lock(&self.keys).get(&k)
        {
            return Ok(Some(row));
        }
        let Some(row) = self.store.key_by_name(tenant_id, name).await?.map(Arc::new) else {
            lock(&self.keys).remove(&k);
            return Ok(None);
        };
        lock(&self.keys).insert(k, row.clone());
        Ok(Some(row))
    }

    /// Every version of a key, oldest first.
    pub async fn versions(&self, key_id: &str, read: Read) -> StoreResult<Arc<Vec<VersionRow>>> {
        if read == Read::Cached
            && let Some(rows) = lock(&self.versions).get(key_id)
        {
            return Ok(rows);
        }
        let rows = Arc::new(self.store.versions(key_id).await?);
        lock(&self.versions).insert(key_id.to_owned(), rows.clone());
        Ok(rows)
    }

    /// Forget a key's row and versions (after a change on this node, so the next use here does
    /// not need a stale-guard retry).
    pub fn forget_key(&self, key_id: &str) {
        lock(&self.keys).remove_where(|k| k.id == key_id);
        lock(&self.versions).remove(key_id);
    }

    /// Forget a key whose cached rows still show `version` enabled when the database says it is
    /// not (the worker's sweep: memory follows changes made on other nodes).
    pub fn forget_if_enabled(&self, key_id: &str, version: i64) {
        let stale = lock(&self.versions).get(key_id).is_some_and(|vs| {
            vs.iter()
                .any(|v| v.version == version && v.state == "enabled")
        });
        if stale {
            self.forget_key(key_id);
        }
    }

    /// Forget every cached token (after a revocation on this node).
    pub fn forget_tokens(&self) {
        lock(&self.tokens).clear();
    }

    /// Forget everything (root-key reseal: cached rows hold the old sealed blobs).
    pub fn clear(&self) {
        lock(&self.tokens).clear();
        lock(&self.tenants).clear();
        lock(&self.keys).clear();
        lock(&self.versions).clear();
    }

    /// Number of cached key version lists (for `/metrics` and the memory figures).
    pub fn cached_keys(&self) -> usize {
        lock(&self.versions).len()
    }
}

/// What a key use decided on: the token, the key's retirement floor, and every version's state.
pub fn guard(token_id: &str, key: &KeyRow, versions: &[VersionRow]) -> UseGuard {
    UseGuard {
        token_id: token_id.to_owned(),
        key_id: key.id.clone(),
        min_decryption_version: key.min_decryption_version,
        versions: versions
            .iter()
            .map(|v| (v.version, v.state.clone()))
            .collect(),
    }
}
