//! Offline wrapping: data keys generated and wrapped locally to a pinned tenant public key.
//!
//! Anyone holding a tenant's public key can wrap data keys to it; only the service can unwrap
//! them. An encryptor built on a [`PinnedPublicKey`] therefore encrypts records with **zero**
//! service calls (each new data key costs one local X-Wing encapsulation, then the cache applies
//! as usual), while reading them back still goes through the service, its `decrypt` role check
//! and its audit log.
//!
//! The exported key format carries no signature, so the key is only as trustworthy as the way
//! it reached you: pin its fingerprint (from `pqkms` key metadata, obtained through a channel
//! you trust — deployment config, a reviewed change) and construction fails with
//! [`Error::FingerprintMismatch`] for any other key.
//!
//! A pinned key wraps to the version it was fetched at. After a rotation, re-pin to move new data
//! keys to the new version (old versions keep decrypting until they are retired).

use std::sync::Arc;

use pqkms_envelope::{
    DataKey, EncryptionContext, Fingerprint, KeyRef, TenantPublicKey, WrappedDataKey,
};

use crate::client::Client;
use crate::encryptor::Encryptor;
use crate::error::{Error, Result};

/// A tenant public key whose fingerprint matched the one the caller expected.
#[derive(Clone, Debug)]
pub struct PinnedPublicKey {
    tenant: String,
    key: String,
    public: Arc<TenantPublicKey>,
}

fn check_pin(public: &TenantPublicKey, expected: &str) -> Result<()> {
    let expected = expected.trim();
    if expected.len() != 32 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Config(
            "expected fingerprint must be 32 hex digits".into(),
        ));
    }
    let actual = public.fingerprint().to_string();
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Error::FingerprintMismatch {
            expected: expected.to_ascii_lowercase(),
            actual,
        })
    }
}

impl PinnedPublicKey {
    /// Pin an exported public key (the `PQPK` bytes) you already hold, for `tenant`'s key `key`:
    /// no service call at all.
    pub fn from_bytes(
        tenant: &str,
        key: &str,
        exported: &[u8],
        expected_fingerprint: &str,
    ) -> Result<Self> {
        let public = TenantPublicKey::from_bytes(exported)?;
        check_pin(&public, expected_fingerprint)?;
        Ok(PinnedPublicKey {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            public: Arc::new(public),
        })
    }

    /// The tenant name.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The key name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The pinned fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint()
    }

    /// Tenant id, key id and version the key wraps to.
    pub fn key_ref(&self) -> &KeyRef {
        self.public.key_ref()
    }

    /// The public key.
    pub fn public_key(&self) -> &TenantPublicKey {
        &self.public
    }

    /// A fresh data key wrapped locally under `context`. Low level: an [`Encryptor`] from
    /// [`Client::offline_encryptor`] does this for you and never exposes the key.
    pub fn generate_data_key(
        &self,
        context: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDataKey)> {
        Ok(self.public.generate_data_key(context)?)
    }
}

impl Client {
    /// Fetch `tenant`'s current public key of `key` once (role `encrypt` or `tenant-admin`) and
    /// pin it: fails with [`Error::FingerprintMismatch`] unless its fingerprint is
    /// `expected_fingerprint` (32 hex digits).
    pub async fn pinned_public_key(
        &self,
        tenant: &str,
        key: &str,
        expected_fingerprint: &str,
    ) -> Result<PinnedPublicKey> {
        let public = self.public_key(tenant, key).await?;
        check_pin(&public, expected_fingerprint)?;
        Ok(PinnedPublicKey {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            public: Arc::new(public),
        })
    }

    /// An encryptor for the pinned key's tenant and key that wraps new data keys locally (zero
    /// service calls to encrypt) and opens records through the service.
    pub fn offline_encryptor(
        &self,
        pinned: &PinnedPublicKey,
        context: EncryptionContext,
    ) -> Encryptor {
        Encryptor::new(
            self.clone(),
            &pinned.tenant,
            &pinned.key,
            context,
            Some(Arc::clone(&pinned.public)),
        )
    }
}
