//! The tenant key hierarchy as the service sees it: creating key versions (sealed under the root
//! key before they reach the store) and a bounded in-memory cache of unsealed private keys and
//! parsed public keys.

use std::sync::{Arc, Mutex};

use pqkms_envelope::{
    KeyId, KeyRef, RootKey, SealedTenantKey, TenantId, TenantPrivateKey, TenantPublicKey,
};

use crate::bounded::{Bounded, lock};
use crate::store::VersionRow;

/// Why a key operation failed inside the service.
#[derive(Debug)]
pub enum KeyError {
    /// A stored id or blob does not parse, or the root key cannot unseal it. Operator problem.
    Corrupt(String),
    /// The OS RNG failed.
    Crypto(pqkms_envelope::Error),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Corrupt(what) => write!(f, "stored key material unusable: {what}"),
            KeyError::Crypto(e) => write!(f, "crypto failure: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Parse a stored hex id.
pub fn tenant_id(hex: &str) -> Result<TenantId, KeyError> {
    TenantId::from_hex(hex).ok_or_else(|| KeyError::Corrupt("tenant id".into()))
}

/// Parse a stored hex id.
pub fn key_id(hex: &str) -> Result<KeyId, KeyError> {
    KeyId::from_hex(hex).ok_or_else(|| KeyError::Corrupt("key id".into()))
}

/// Creates and opens tenant keys.
pub struct KeyService {
    /// Seals new versions; also unseals what it sealed.
    root: RootKey,
    /// Older root keys, kept only to unseal (and re-seal) rows during a root-key rotation.
    previous: Vec<RootKey>,
    private: Mutex<Bounded<(String, i64), TenantPrivateKey>>,
    public: Mutex<Bounded<(String, i64), TenantPublicKey>>,
}

fn now_ms() -> i64 {
    crate::now_ms()
}

impl KeyService {
    /// A key service over `root` (and `previous` root keys for unsealing only), caching up to
    /// `capacity` private and public keys each.
    pub fn new(root: RootKey, previous: Vec<RootKey>, capacity: usize) -> Self {
        KeyService {
            root,
            previous,
            private: Mutex::new(Bounded::new(capacity)),
            public: Mutex::new(Bounded::new(capacity)),
        }
    }

    /// Generate a key pair version and seal it: the row to store.
    pub fn new_version(&self, key_ref: KeyRef) -> Result<VersionRow, KeyError> {
        let private = TenantPrivateKey::generate(key_ref).map_err(KeyError::Crypto)?;
        let sealed = self
            .root
            .seal_tenant_key(&private)
            .map_err(KeyError::Crypto)?;
        let public = private.public_key();
        let row = VersionRow {
            key_id: key_ref.key.to_string(),
            version: i64::from(key_ref.version),
            state: "enabled".into(),
            sealed_private: Some(sealed.as_bytes().to_vec()),
            root_version: i64::from(self.root.version()),
            public_key: public.to_bytes(),
            fingerprint: public.fingerprint().to_string(),
            created_at: now_ms(),
            destroy_at: None,
            destroyed_at: None,
        };
        // Not cached here: the row may never commit (name conflict, concurrent rotation). The
        // first use unseals it.
        Ok(row)
    }

    /// The parsed public key of a stored version (validated once, then cached).
    pub fn public_key(&self, row: &VersionRow) -> Result<Arc<TenantPublicKey>, KeyError> {
        let cache_key = (row.key_id.clone(), row.version);
        if let Some(k) = lock(&self.public).get(&cache_key) {
            return Ok(k);
        }
        let key = Arc::new(
            TenantPublicKey::from_bytes(&row.public_key)
                .map_err(|e| KeyError::Corrupt(format!("public key: {e}")))?,
        );
        lock(&self.public).insert(cache_key, key.clone());
        Ok(key)
    }

    /// The unsealed private key of a stored version, checked against the row it came from.
    pub fn private_key(
        &self,
        tenant: TenantId,
        row: &VersionRow,
    ) -> Result<Arc<TenantPrivateKey>, KeyError> {
        if let Some(k) = self.cached_private_key(row) {
            return Ok(k);
        }
        let expected = KeyRef {
            tenant,
            key: key_id(&row.key_id)?,
            version: u32::try_from(row.version).map_err(|_| KeyError::Corrupt("version".into()))?,
        };
        let sealed_bytes = row
            .sealed_private
            .as_deref()
            .ok_or_else(|| KeyError::Corrupt("key material destroyed".into()))?;
        let sealed = SealedTenantKey::parse(sealed_bytes)
            .map_err(|e| KeyError::Corrupt(format!("sealed key: {e}")))?;
        let key = Arc::new(
            self.root_for(sealed.root_key_version())?
                .unseal_tenant_key(&sealed, &expected)
                .map_err(|_| {
                    KeyError::Corrupt("sealed key does not open under the root key".into())
                })?,
        );
        lock(&self.private).insert((row.key_id.clone(), row.version), key.clone());
        Ok(key)
    }

    /// The private key of a stored version if it is unsealed in memory already.
    pub fn cached_private_key(&self, row: &VersionRow) -> Option<Arc<TenantPrivateKey>> {
        lock(&self.private).get(&(row.key_id.clone(), row.version))
    }

    /// The root key of a given version: the current one or a configured previous one.
    fn root_for(&self, version: u32) -> Result<&RootKey, KeyError> {
        std::iter::once(&self.root)
            .chain(&self.previous)
            .find(|r| r.version() == version)
            .ok_or_else(|| {
                KeyError::Corrupt(format!("no root key of version {version} is configured"))
            })
    }

    /// The current root key version (what new seals use).
    pub fn root_version(&self) -> u32 {
        self.root.version()
    }

    /// Re-seal a stored version under the current root key (root-key rotation). The unsealed key
    /// lives only inside this call.
    pub fn reseal(&self, tenant: TenantId, row: &VersionRow) -> Result<Vec<u8>, KeyError> {
        let expected = KeyRef {
            tenant,
            key: key_id(&row.key_id)?,
            version: u32::try_from(row.version).map_err(|_| KeyError::Corrupt("version".into()))?,
        };
        let bytes = row
            .sealed_private
            .as_deref()
            .ok_or_else(|| KeyError::Corrupt("key material destroyed".into()))?;
        let sealed = SealedTenantKey::parse(bytes)
            .map_err(|e| KeyError::Corrupt(format!("sealed key: {e}")))?;
        let private = self
            .root_for(sealed.root_key_version())?
            .unseal_tenant_key(&sealed, &expected)
            .map_err(|_| KeyError::Corrupt("sealed key does not open under its root key".into()))?;
        let resealed = self
            .root
            .seal_tenant_key(&private)
            .map_err(KeyError::Crypto)?;
        Ok(resealed.as_bytes().to_vec())
    }

    /// Drop every cached private key (they zeroize as the last reference goes).
    pub fn clear_cache(&self) {
        lock(&self.private).clear();
    }

    /// Forget one version (disabled, destroyed): its unsealed key is zeroized as the last
    /// reference goes.
    pub fn evict(&self, key_id: &str, version: i64) {
        let k = (key_id.to_owned(), version);
        lock(&self.private).remove(&k);
        lock(&self.public).remove(&k);
    }

    /// Number of cached private keys.
    pub fn cached_private_keys(&self) -> usize {
        lock(&self.private).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pqkms_envelope::KeyId;

    #[test]
    fn new_versions_are_cached_and_unseal_after_a_cache_clear() {
        let service = KeyService::new(RootKey::generate(1).unwrap(), Vec::new(), 4);
        let key_ref = KeyRef {
            tenant: TenantId::random().unwrap(),
            key: KeyId::random().unwrap(),
            version: 1,
        };
        let row = service.new_version(key_ref).unwrap();
        assert_eq!(
            service.cached_private_keys(),
            0,
            "uncommitted versions are not cached"
        );
        let private = service.private_key(key_ref.tenant, &row).unwrap();
        assert_eq!(service.cached_private_keys(), 1);
        service.clear_cache();
        assert_eq!(service.cached_private_keys(), 0);
        assert_eq!(
            private.public_key().fingerprint().to_string(),
            row.fingerprint
        );
        // A row moved to another tenant does not unseal.
        service.clear_cache();
        assert!(
            service
                .private_key(TenantId::random().unwrap(), &row)
                .is_err()
        );
    }
}
