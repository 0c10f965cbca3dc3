//! Sealed tenant private key:
//! `"PQSK" | 0x01 | alg | u32 root version | key ref | nonce (12) | AES-256-GCM(seed) (32 + 16)`.
//! The AAD is everything before the nonce, so the sealed key cannot be moved to another tenant,
//! key, version or root key.

use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};

use super::{ALG_XWING_HKDF_AES256GCM, KEY_REF_LEN, Reader, put_key_ref};
use crate::error::{Error, Result};
use crate::ids::KeyRef;
use crate::keys::{RootKey, TenantPrivateKey};
use crate::primitives::aead::{NONCE_LEN, TAG_LEN};
use crate::primitives::fill_random;
use crate::xwing;

pub(crate) const MAGIC: &[u8; 4] = b"PQSK";
const HEADER_LEN: usize = 4 + 1 + 1 + 4 + KEY_REF_LEN;
/// Total encoded length.
pub(crate) const LEN: usize = HEADER_LEN + NONCE_LEN + xwing::SEED_LEN + TAG_LEN;

/// A tenant private key sealed under a root key, as stored in the database.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SealedTenantKey {
    bytes: Vec<u8>,
    root_version: u32,
    key_ref: KeyRef,
}

impl SealedTenantKey {
    /// Parse the structure (the seal itself is checked by [`RootKey::unseal_tenant_key`]).
    pub fn parse(input: &[u8]) -> Result<Self> {
        let mut r = Reader::new(input);
        r.header(MAGIC)?;
        r.algorithm(ALG_XWING_HKDF_AES256GCM)?;
        let root_version = r.u32()?;
        let key_ref = r.key_ref()?;
        r.take(NONCE_LEN + xwing::SEED_LEN + TAG_LEN)?;
        r.finish()?;
        Ok(SealedTenantKey {
            bytes: input.to_vec(),
            root_version,
            key_ref,
        })
    }

    /// The version of the root key that sealed it.
    pub fn root_key_version(&self) -> u32 {
        self.root_version
    }

    /// The tenant key version it holds.
    pub fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }

    /// The encoding, 106 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl RootKey {
    /// Seal a tenant private key for storage.
    pub fn seal_tenant_key(&self, key: &TenantPrivateKey) -> Result<SealedTenantKey> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.seal_with_nonce(key, &nonce)
    }

    pub(crate) fn seal_with_nonce(
        &self,
        key: &TenantPrivateKey,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<SealedTenantKey> {
        let key_ref = *key.key_ref();
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(MAGIC);
        out.push(super::VERSION_1);
        out.push(ALG_XWING_HKDF_AES256GCM);
        out.extend_from_slice(&self.version().to_be_bytes());
        put_key_ref(&mut out, &key_ref);
        let header = out.clone();
        out.extend_from_slice(nonce);
        self.seal_key
            .seal_into(nonce, &header, key.seed.expose_secret(), &mut out)?;
        Ok(SealedTenantKey {
            bytes: out,
            root_version: self.version(),
            key_ref,
        })
    }

    /// Open a sealed tenant key and expand it. `expected` is the row the caller read it from: a
    /// sealed key copied into another tenant's or key's row is refused, as is a wrong root key
    /// or any tampering — all as [`Error::Decryption`].
    pub fn unseal_tenant_key(
        &self,
        sealed: &SealedTenantKey,
        expected: &KeyRef,
    ) -> Result<TenantPrivateKey> {
        if sealed.key_ref != *expected || sealed.root_version != self.version() {
            return Err(Error::Decryption);
        }
        let (header, rest) = sealed.bytes.split_at(HEADER_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Error::Decryption)?;
        let seed = zeroize::Zeroizing::new(self.seal_key.open(&nonce, header, body)?);
        let mut secret = SecretBox::new(Box::new([0u8; xwing::SEED_LEN]));
        if seed.len() != xwing::SEED_LEN {
            return Err(Error::Decryption);
        }
        secret.expose_secret_mut().copy_from_slice(&seed);
        TenantPrivateKey::from_seed(sealed.key_ref, secret)
    }
}
