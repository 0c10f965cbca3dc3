//! Self-contained envelope for documents and files:
//! `"PQEV" | 0x01 | u16 wrapped-key length | wrapped data key | nonce (12) | ciphertext | tag (16)`.
//!
//! A fresh data key is generated per envelope; the content key is
//! `HKDF-SHA256(ikm = data key, info = "pqkms/v1/envelope")` and the AAD is everything before the
//! nonce. Single-shot: the whole plaintext is in memory (streaming is a later format version).

use zeroize::Zeroizing;

use super::Reader;
use super::wrapped_key::WrappedDataKey;
use crate::context::EncryptionContext;
use crate::error::{Error, Result};
use crate::keys::{DataKey, TenantPrivateKey, TenantPublicKey};
use crate::primitives::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use crate::primitives::{fill_random, kdf::hkdf_sha256};

pub(crate) const MAGIC: &[u8; 4] = b"PQEV";
const KDF_LABEL: &[u8] = b"pqkms/v1/envelope";

/// A parsed envelope, borrowing its input.
#[derive(Debug)]
pub struct Envelope<'a> {
    aad: &'a [u8],
    wrapped: WrappedDataKey,
    nonce: [u8; NONCE_LEN],
    body: &'a [u8],
}

fn content_key(data_key: &DataKey) -> Result<AeadKey> {
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(None, data_key.expose_secret(), &[KDF_LABEL], &mut key[..])?;
    Ok(AeadKey::new(&key))
}

impl<'a> Envelope<'a> {
    /// Parse the structure.
    pub fn parse(input: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(input);
        r.header(MAGIC)?;
        let wrapped_len = usize::from(r.u16()?);
        let wrapped = WrappedDataKey::parse(r.take(wrapped_len)?)?;
        let aad = &input[..r.position()];
        let nonce = r.array()?;
        let body = r.rest();
        if body.len() < TAG_LEN {
            return Err(Error::Truncated);
        }
        Ok(Envelope {
            aad,
            wrapped,
            nonce,
            body,
        })
    }

    /// The wrapped data key: unwrap it (here or through the service) and pass it to [`Envelope::open`].
    pub fn wrapped_key(&self) -> &WrappedDataKey {
        &self.wrapped
    }

    /// Decrypt the content with the unwrapped data key.
    pub fn open(&self, data_key: &DataKey) -> Result<Vec<u8>> {
        content_key(data_key)?.open(&self.nonce, self.aad, self.body)
    }
}

impl TenantPublicKey {
    /// Encrypt a document to this key version under `context`, with a fresh data key.
    pub fn seal_envelope(&self, context: &EncryptionContext, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (data_key, wrapped) = self.generate_data_key(context)?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        seal_with(&data_key, &wrapped, &nonce, plaintext)
    }
}

pub(crate) fn seal_with(
    data_key: &DataKey,
    wrapped: &WrappedDataKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let wrapped = wrapped.as_bytes();
    let wrapped_len = u16::try_from(wrapped.len()).map_err(|_| Error::TooLarge)?;
    let mut out = Vec::with_capacity(7 + wrapped.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(super::VERSION_1);
    out.extend_from_slice(&wrapped_len.to_be_bytes());
    out.extend_from_slice(wrapped);
    let aad = out.clone();
    out.extend_from_slice(nonce);
    content_key(data_key)?.seal_into(nonce, &aad, plaintext, &mut out)?;
    Ok(out)
}

impl TenantPrivateKey {
    /// Unwrap and decrypt an envelope in one step.
    pub fn open_envelope(&self, envelope: &[u8], context: &EncryptionContext) -> Result<Vec<u8>> {
        let envelope = Envelope::parse(envelope)?;
        let data_key = self.unwrap_data_key(envelope.wrapped_key(), context)?;
        envelope.open(&data_key)
    }
}
