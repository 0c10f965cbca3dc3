//! The data-key cache: field keys kept in memory between records, within limits the caller sets.
//!
//! Two maps, one per direction:
//!
//! - **encryption**, keyed by (source, tenant, key, context digest): which data key new records
//!   of that tenant, key and context get. The source separates keys from the service from keys
//!   wrapped offline to a pinned public key (and keys pinned to different fingerprints).
//! - **decryption**, keyed by (tenant, key, context digest, wrapped-key tag): a record whose
//!   wrapped key was already opened *for this tenant, key and context* skips the service. The
//!   context is part of the key, so a cache hit can never let a caller skip the service's context
//!   check: a different context is a miss, and the service then refuses it. The map is keyed on
//!   the wrapped key's last 16 bytes (the AES-GCM tag sealing its data key: random per wrapped
//!   key) instead of all 1254 bytes, so a lookup hashes 16 bytes and copies nothing; a hit is only
//!   taken if the whole wrapped key equals the one the entry was opened from, so a different blob
//!   with the same tag (forged, or tampered outside the tag) is a miss and goes to the service.
//!
//! Entries are never shared across tenants or contexts because both are part of every cache key.
//! Only derived [`FieldKey`]s are cached (never the data key itself); they zeroize on drop, which
//! happens when an entry is evicted (or the cache cleared or dropped) and the last record using
//! it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pqkms_envelope::{ContextDigest, FieldKey, Fingerprint, WrappedDataKey};

use crate::error::{Error, Result};

/// Limits of the data-key cache. A cached data key is handed to a new record only while it is
/// younger than `max_age` and has encrypted (or decrypted) fewer than `max_fields_per_key` fields
/// and `max_bytes_per_key` plaintext bytes; each direction keeps at most `max_entries` keys,
/// evicting expired ones first, then the oldest.
///
/// The field and byte limits are checked when a record starts: a record in progress finishes its
/// fields under the key it started with (one record stores one wrapped key), so a key can
/// exceed its limit by at most one record's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Longest a data key stays in the cache after it was obtained.
    pub max_age: Duration,
    /// Fields one cached data key may encrypt (or decrypt) before it is retired.
    pub max_fields_per_key: u64,
    /// Plaintext bytes one cached data key may encrypt (or decrypt) before it is retired.
    pub max_bytes_per_key: u64,
    /// Data keys kept per direction (encryption, decryption). 0 disables the cache.
    pub max_entries: usize,
}

impl Default for CacheLimits {
    /// 5 minutes, 2^20 fields, 1 GiB, 1000 keys per direction. 2^20 fields keeps the random-nonce
    /// collision probability of AES-GCM far below NIST's 2^-32 bound (2^32 fields per key).
    fn default() -> Self {
        CacheLimits {
            max_age: Duration::from_secs(300),
            max_fields_per_key: 1 << 20,
            max_bytes_per_key: 1 << 30,
            max_entries: 1000,
        }
    }
}

impl CacheLimits {
    /// No caching: every record gets a fresh data key, every opened record calls the service.
    pub fn disabled() -> Self {
        CacheLimits {
            max_entries: 0,
            ..CacheLimits::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        // AES-GCM with random 96-bit nonces: NIST SP 800-38D §8.3 allows 2^32 invocations per key.
        if self.max_fields_per_key > 1 << 32 {
            return Err(Error::Config(
                "max_fields_per_key above 2^32 breaks the AES-GCM random-nonce bound".into(),
            ));
        }
        Ok(())
    }

    fn enabled(&self) -> bool {
        self.max_entries > 0 && self.max_fields_per_key > 0 && self.max_bytes_per_key > 0
    }
}

/// A field key in use: cached, or held by a record in progress.
pub(crate) struct CachedKey {
    pub(crate) field_key: FieldKey,
    /// The wrapped form of the data key: what a record stores.
    pub(crate) wrapped: WrappedDataKey,
    created: Instant,
    fields: AtomicU64,
    bytes: AtomicU64,
}

impl CachedKey {
    pub(crate) fn new(field_key: FieldKey, wrapped: WrappedDataKey) -> Arc<Self> {
        Arc::new(CachedKey {
            field_key,
            wrapped,
            created: Instant::now(),
            fields: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// Count one field of `len` plaintext bytes.
    pub(crate) fn count(&self, len: usize) {
        self.fields.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(u64::try_from(len).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn usable(&self, limits: &CacheLimits, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < limits.max_age
            && self.fields.load(Ordering::Relaxed) < limits.max_fields_per_key
            && self.bytes.load(Ordering::Relaxed) < limits.max_bytes_per_key
    }
}

/// Where the data keys of an encryptor come from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Source {
    Service,
    Offline(Fingerprint),
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct EncryptKey {
    pub(crate) source: Source,
    pub(crate) tenant: String,
    pub(crate) key: String,
    pub(crate) context: ContextDigest,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct DecryptKey {
    pub(crate) tenant: Arc<str>,
    pub(crate) key: Arc<str>,
    pub(crate) context: ContextDigest,
    /// [`wrapped_tag`] of the wrapped key; the whole key is compared on a hit.
    pub(crate) tag: [u8; WRAPPED_TAG_LEN],
}

/// Length of the part of a wrapped key the decryption map is keyed on.
pub(crate) const WRAPPED_TAG_LEN: usize = 16;

/// The last 16 bytes of a wrapped key (its AES-GCM tag); a shorter blob is zero-padded (it will
/// not open at the service anyway, so it never gets an entry).
pub(crate) fn wrapped_tag(wrapped_key: &[u8]) -> [u8; WRAPPED_TAG_LEN] {
    let mut tag = [0u8; WRAPPED_TAG_LEN];
    let tail = &wrapped_key[wrapped_key.len().saturating_sub(WRAPPED_TAG_LEN)..];
    tag[..tail.len()].copy_from_slice(tail);
    tag
}

pub(crate) struct KeyCache {
    limits: CacheLimits,
    encrypt: Mutex<HashMap<EncryptKey, Arc<CachedKey>>>,
    decrypt: Mutex<HashMap<DecryptKey, Arc<CachedKey>>>,
}

/// A poisoned lock only means another thread panicked while holding it; the maps stay consistent
/// (every update is a single insert or remove), so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KeyCache {
    pub(crate) fn new(limits: CacheLimits) -> Self {
        KeyCache {
            limits,
            encrypt: Mutex::new(HashMap::new()),
            decrypt: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    pub(crate) fn clear(&self) {
        lock(&self.encrypt).clear();
        lock(&self.decrypt).clear();
    }

    pub(crate) fn get_encrypt(&self, k: &EncryptKey) -> Option<Arc<CachedKey>> {
        get(&self.encrypt, k, &self.limits, |_| true)
    }

    pub(crate) fn put_encrypt(&self, k: EncryptKey, v: &Arc<CachedKey>) {
        put(&self.encrypt, k, v, &self.limits);
    }

    /// The entry for `k`, if it was opened from exactly `wrapped_key`.
    pub(crate) fn get_decrypt(&self, k: &DecryptKey, wrapped_key: &[u8]) -> Option<Arc<CachedKey>> {
        get(&self.decrypt, k, &self.limits, |e| {
            e.wrapped.as_bytes() == wrapped_key
        })
    }

    pub(crate) fn put_decrypt(&self, k: DecryptKey, v: &Arc<CachedKey>) {
        put(&self.decrypt, k, v, &self.limits);
    }

    /// Entries currently held (encryption, decryption), expired ones included until evicted.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (lock(&self.encrypt).len(), lock(&self.decrypt).len())
    }
}

fn get<K: Eq + std::hash::Hash + Clone>(
    map: &Mutex<HashMap<K, Arc<CachedKey>>>,
    k: &K,
    limits: &CacheLimits,
    same: impl Fn(&CachedKey) -> bool,
) -> Option<Arc<CachedKey>> {
    if !limits.enabled() {
        return None;
    }
    let mut map = lock(map);
    let entry = map.get(k)?;
    if !same(entry) {
        // Another blob under the same map key: not this entry's (it stays for its own blob).
        return None;
    }
    if entry.usable(limits, Instant::now()) {
        Some(Arc::clone(entry))
    } else {
        // Retired: drop it now rather than at the next eviction.
        map.remove(k);
        None
    }
}

fn put<K: Eq + std::hash::Hash + Clone>(
    map: &Mutex<HashMap<K, Arc<CachedKey>>>,
    k: K,
    v: &Arc<CachedKey>,
    limits: &CacheLimits,
) {
    if !limits.enabled() {
        return;
    }
    let mut map = lock(map);
    if map.len() >= limits.max_entries && !map.contains_key(&k) {
        let now = Instant::now();
        map.retain(|_, e| e.usable(limits, now));
        while map.len() >= limits.max_entries {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
    }
    map.insert(k, Arc::clone(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pqkms_envelope::{EncryptionContext, KeyId, KeyRef, TenantId, TenantPrivateKey};

    fn entry() -> Arc<CachedKey> {
        let key_ref = KeyRef {
            tenant: TenantId::from_bytes([1; 16]),
            key: KeyId::from_bytes([2; 16]),
            version: 1,
        };
        let private = TenantPrivateKey::generate(key_ref).unwrap();
        let (dk, wrapped) = private
            .public_key()
            .generate_data_key(&EncryptionContext::new())
            .unwrap();
        CachedKey::new(FieldKey::new(&dk).unwrap(), wrapped)
    }

    fn ekey(tenant: &str) -> EncryptKey {
        EncryptKey {
            source: Source::Service,
            tenant: tenant.into(),
            key: "default".into(),
            context: EncryptionContext::new().digest(),
        }
    }

    #[test]
    fn evicts_oldest_beyond_max_entries() {
        let cache = KeyCache::new(CacheLimits {
            max_entries: 2,
            ..CacheLimits::default()
        });
        for t in ["a", "b", "c"] {
            cache.put_encrypt(ekey(t), &entry());
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(cache.len().0, 2);
        assert!(cache.get_encrypt(&ekey("a")).is_none());
        assert!(cache.get_encrypt(&ekey("b")).is_some());
        assert!(cache.get_encrypt(&ekey("c")).is_some());
    }

    #[test]
    fn retires_on_fields_bytes_and_age() {
        let limits = CacheLimits {
            max_fields_per_key: 2,
            max_bytes_per_key: 100,
            max_age: Duration::from_millis(50),
            max_entries: 10,
        };
        let cache = KeyCache::new(limits);
        let e = entry();
        cache.put_encrypt(ekey("a"), &e);
        e.count(1);
        assert!(cache.get_encrypt(&ekey("a")).is_some());
        e.count(1);
        assert!(
            cache.get_encrypt(&ekey("a")).is_none(),
            "2 fields retire it"
        );
        assert_eq!(cache.len().0, 0);

        let e = entry();
        cache.put_encrypt(ekey("a"), &e);
        e.count(100);
        assert!(
            cache.get_encrypt(&ekey("a")).is_none(),
            "100 bytes retire it"
        );

        let e = entry();
        cache.put_encrypt(ekey("a"), &e);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get_encrypt(&ekey("a")).is_none(), "age retires it");
    }

    #[test]
    fn decryption_hits_need_the_whole_wrapped_key() {
        let cache = KeyCache::new(CacheLimits::default());
        let e = entry();
        let blob = e.wrapped.as_bytes().to_vec();
        let dkey = |blob: &[u8]| DecryptKey {
            tenant: "a".into(),
            key: "default".into(),
            context: EncryptionContext::new().digest(),
            tag: wrapped_tag(blob),
        };
        cache.put_decrypt(dkey(&blob), &e);
        assert!(cache.get_decrypt(&dkey(&blob), &blob).is_some());
        // Same tag, one other byte: same map key, but not a hit (and the entry stays).
        let mut forged = blob.clone();
        forged[100] ^= 1;
        assert!(dkey(&forged) == dkey(&blob));
        assert!(cache.get_decrypt(&dkey(&forged), &forged).is_none());
        assert!(cache.get_decrypt(&dkey(&blob), &blob).is_some());
        // Another tag: another map key.
        let mut other = blob.clone();
        *other.last_mut().unwrap() ^= 1;
        assert!(cache.get_decrypt(&dkey(&other), &other).is_none());
        assert_eq!(wrapped_tag(b"short"), *b"short\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(wrapped_tag(&blob)[..], blob[blob.len() - 16..]);
    }

    #[test]
    fn disabled_caches_nothing() {
        let cache = KeyCache::new(CacheLimits::disabled());
        cache.put_encrypt(ekey("a"), &entry());
        assert_eq!(cache.len(), (0, 0));
        assert!(cache.get_encrypt(&ekey("a")).is_none());
    }

    #[test]
    fn refuses_limits_beyond_the_nonce_bound() {
        let limits = CacheLimits {
            max_fields_per_key: (1 << 32) + 1,
            ..CacheLimits::default()
        };
        assert!(limits.validate().is_err());
    }
}
