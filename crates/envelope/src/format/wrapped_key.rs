//! Wrapped data key:
//! `"PQWK" | 0x01 | alg | key ref | context digest (32) | X-Wing ct (1120) | nonce (12) |
//! AES-256-GCM(data key) (32 + 16)`.
//!
//! `kek = HKDF-SHA256(salt = none, ikm = X-Wing ss, info = "pqkms/v1/wrapped-data-key" || header)`,
//! and the AEAD's AAD is the header (everything before the ciphertext), so a blob presented for
//! another tenant, key, version or context fails to open.

use zeroize::Zeroizing;

use super::{ALG_XWING_HKDF_AES256GCM, KEY_REF_LEN, Reader, put_key_ref};
use crate::context::{ContextDigest, EncryptionContext};
use crate::error::{Error, Result};
use crate::ids::KeyRef;
use crate::keys::{DataKey, TenantPrivateKey, TenantPublicKey};
use crate::primitives::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use crate::primitives::{fill_random, kdf::hkdf_sha256};
use crate::xwing;

pub(crate) const MAGIC: &[u8; 4] = b"PQWK";
const KDF_LABEL: &[u8] = b"pqkms/v1/wrapped-data-key";
pub(crate) const HEADER_LEN: usize = 4 + 1 + 1 + KEY_REF_LEN + 32;
const CT_END: usize = HEADER_LEN + xwing::CIPHERTEXT_LEN;
const NONCE_END: usize = CT_END + NONCE_LEN;
/// Random bytes a new data key takes: the key, the encapsulation seed, the nonce.
pub(crate) const GENERATE_RANDOM_LEN: usize = 32 + xwing::ENCAPS_SEED_LEN + NONCE_LEN;

/// A wrapped data key, structurally valid. Safe to store and to log: it reveals the key version and
/// the context digest, nothing else.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WrappedDataKey {
    bytes: Vec<u8>,
    key_ref: KeyRef,
    context: ContextDigest,
}

impl WrappedDataKey {
    /// Encoded length: 1254 bytes.
    pub const LEN: usize = NONCE_END + 32 + TAG_LEN;

    /// Parse the structure. Says which key version can open it; opening is
    /// [`TenantPrivateKey::unwrap_data_key`].
    pub fn parse(input: &[u8]) -> Result<Self> {
        let mut r = Reader::new(input);
        r.header(MAGIC)?;
        r.algorithm(ALG_XWING_HKDF_AES256GCM)?;
        let key_ref = r.key_ref()?;
        let context = ContextDigest(r.array()?);
        r.take(Self::LEN - r.position())?;
        r.finish()?;
        Ok(WrappedDataKey {
            bytes: input.to_vec(),
            key_ref,
            context,
        })
    }

    /// The tenant key version it is wrapped to.
    pub fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }

    /// The digest of the context it is bound to.
    pub fn context_digest(&self) -> &ContextDigest {
        &self.context
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoding, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

fn key_encryption_key(shared_secret: &[u8; 32], header: &[u8]) -> Result<AeadKey> {
    let mut kek = Zeroizing::new([0u8; 32]);
    hkdf_sha256(None, shared_secret, &[KDF_LABEL, header], &mut kek[..])?;
    Ok(AeadKey::new(&kek))
}

impl TenantPublicKey {
    /// Generate a fresh data key and wrap it to this key version under `context`.
    pub fn generate_data_key(
        &self,
        context: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDataKey)> {
        // The three random inputs — the key, the encapsulation seed, the nonce — come from one
        // call to the OS instead of three (three system calls were 1.9 % of a busy server's
        // samples).
        let mut random = Zeroizing::new([0u8; GENERATE_RANDOM_LEN]);
        fill_random(&mut random[..])?;
        self.generate_data_key_from(&random, context)
    }

    /// [`Self::generate_data_key`] with its random bytes given: `key (32) | encapsulation seed
    /// (64) | nonce (12)`.
    pub(crate) fn generate_data_key_from(
        &self,
        random: &[u8; GENERATE_RANDOM_LEN],
        context: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDataKey)> {
        let (key, rest) = random.split_first_chunk::<32>().ok_or(Error::Randomness)?;
        let (eseed, nonce) = rest
            .split_first_chunk::<{ xwing::ENCAPS_SEED_LEN }>()
            .ok_or(Error::Randomness)?;
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| Error::Randomness)?;
        let data_key = DataKey::from_bytes(key);
        let (ct, ss) = self.encapsulation.encapsulate_with_seed(eseed)?;
        let wrapped = self.wrap_with(&data_key, context.digest(), &ct, &ss, nonce)?;
        Ok((data_key, wrapped))
    }

    /// Wrap an existing data key to this key version (re-wrap to a newer version).
    pub fn wrap_data_key(
        &self,
        data_key: &DataKey,
        context: &EncryptionContext,
    ) -> Result<WrappedDataKey> {
        let (ct, ss) = self.encapsulation.encapsulate()?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.wrap_with(data_key, context.digest(), &ct, &ss, &nonce)
    }

    /// Deterministic wrap, for golden vectors only.
    #[cfg(test)]
    pub(crate) fn wrap_deterministic(
        &self,
        data_key: &DataKey,
        context: &EncryptionContext,
        eseed: &[u8; xwing::ENCAPS_SEED_LEN],
        nonce: &[u8; NONCE_LEN],
    ) -> Result<WrappedDataKey> {
        let (ct, ss) = self.encapsulation.encapsulate_with_seed(eseed)?;
        self.wrap_with(data_key, context.digest(), &ct, &ss, nonce)
    }

    fn wrap_with(
        &self,
        data_key: &DataKey,
        context: ContextDigest,
        ct: &[u8; xwing::CIPHERTEXT_LEN],
        ss: &[u8; 32],
        nonce: &[u8; NONCE_LEN],
    ) -> Result<WrappedDataKey> {
        let mut out = Vec::with_capacity(WrappedDataKey::LEN);
        out.extend_from_slice(MAGIC);
        out.push(super::VERSION_1);
        out.push(ALG_XWING_HKDF_AES256GCM);
        put_key_ref(&mut out, &self.key_ref);
        out.extend_from_slice(&context.0);
        let kek = key_encryption_key(ss, &out)?;
        let header = out.clone();
        out.extend_from_slice(ct);
        out.extend_from_slice(nonce);
        kek.seal_into(nonce, &header, data_key.expose_secret(), &mut out)?;
        Ok(WrappedDataKey {
            bytes: out,
            key_ref: self.key_ref,
            context,
        })
    }
}

impl TenantPrivateKey {
    /// Unwrap a data key. Fails with the uniform [`Error::Decryption`] if the blob names another
    /// tenant, key or version than this one, if `context` differs, or if any byte was changed.
    pub fn unwrap_data_key(
        &self,
        wrapped: &WrappedDataKey,
        context: &EncryptionContext,
    ) -> Result<DataKey> {
        if wrapped.key_ref != *self.key_ref() || wrapped.context != context.digest() {
            return Err(Error::Decryption);
        }
        let bytes = &wrapped.bytes;
        let header = &bytes[..HEADER_LEN];
        let mut ct = [0u8; xwing::CIPHERTEXT_LEN];
        ct.copy_from_slice(&bytes[HEADER_LEN..CT_END]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[CT_END..NONCE_END]);

        let ss = self.decapsulation.decapsulate(&ct)?;
        let kek = key_encryption_key(&ss, header)?;
        let plain = Zeroizing::new(kek.open(&nonce, header, &bytes[NONCE_END..])?);
        let key: &[u8; 32] = plain.as_slice().try_into().map_err(|_| Error::Decryption)?;
        Ok(DataKey::from_bytes(key))
    }
}
