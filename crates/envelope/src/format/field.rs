//! Field ciphertext: `"PF" | 0x01 | data key id (8) | nonce (12) | ciphertext | tag (16)`,
//! 39 bytes of overhead.
//!
//! `HKDF-SHA256(ikm = data key, info = "pqkms/v1/field", L = 40)` gives the field key (bytes 0..32)
//! and the data key id (bytes 32..40). The id lets a reader pick the right wrapped data key of a
//! record without unwrapping any, and it survives a re-wrap (it depends on the data key, not on
//! its wrapping). The AAD is the 11-byte header followed by the caller's associated data (say, the
//! table, column and row id), so a field cannot be moved to another row or column unnoticed.
//!
//! Nonces are 96 random bits. The collision bound of NIST SP 800-38D §8.3 allows 2^32 fields per
//! data key; the client crate rotates data keys far below that.

use core::fmt;

use zeroize::Zeroizing;

use super::Reader;
use crate::error::{Error, Result};
use crate::keys::DataKey;
use crate::primitives::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use crate::primitives::{fill_random, kdf::hkdf_sha256};

pub(crate) const MAGIC: &[u8; 2] = b"PF";
const KDF_LABEL: &[u8] = b"pqkms/v1/field";
const HEADER_LEN: usize = 2 + 1 + 8;

/// Bytes a field ciphertext adds to its plaintext.
pub const FIELD_OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Short public identifier of a data key, carried in every field ciphertext.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataKeyId([u8; 8]);

impl DataKeyId {
    /// The 8 bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// Which data key a field ciphertext was encrypted under (structure check only).
    pub fn of_field(field: &[u8]) -> Result<Self> {
        Ok(parse(field)?.key_id)
    }
}

impl fmt::Display for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::ids::write_hex(f, &self.0)
    }
}

impl fmt::Debug for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKeyId({self})")
    }
}

/// Encrypts and decrypts fields under one data key. Derive it once per data key and reuse it:
/// each field then costs one AES-GCM call and 12 random bytes. Secret; no `Debug`, no `Clone`.
pub struct FieldKey {
    id: DataKeyId,
    aead: AeadKey,
}

struct ParsedField<'a> {
    header: &'a [u8],
    key_id: DataKeyId,
    nonce: [u8; NONCE_LEN],
    body: &'a [u8],
}

fn parse(input: &[u8]) -> Result<ParsedField<'_>> {
    let mut r = Reader::new(input);
    r.header(MAGIC)?;
    let key_id = DataKeyId(r.array()?);
    let header = &input[..r.position()];
    let nonce = r.array()?;
    let body = r.rest();
    if body.len() < TAG_LEN {
        return Err(Error::Truncated);
    }
    Ok(ParsedField {
        header,
        key_id,
        nonce,
        body,
    })
}

impl FieldKey {
    /// Derive the field key and id from a data key.
    pub fn new(data_key: &DataKey) -> Result<Self> {
        let mut okm = Zeroizing::new([0u8; 40]);
        hkdf_sha256(None, data_key.expose_secret(), &[KDF_LABEL], &mut okm[..])?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&okm[..32]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&okm[32..]);
        Ok(FieldKey {
            id: DataKeyId(id),
            aead: AeadKey::new(&key),
        })
    }

    /// The id written into every field this key encrypts.
    pub fn id(&self) -> DataKeyId {
        self.id
    }

    /// Encrypt one field. `associated_data` is authenticated, not stored: pass the same bytes to
    /// [`FieldKey::decrypt`].
    pub fn encrypt(&self, plaintext: &[u8], associated_data: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.encrypt_with_nonce(plaintext, associated_data, &nonce)
    }

    pub(crate) fn encrypt_with_nonce(
        &self,
        plaintext: &[u8],
        associated_data: &[u8],
        nonce: &[u8; NONCE_LEN],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(FIELD_OVERHEAD + plaintext.len());
        out.extend_from_slice(MAGIC);
        out.push(super::VERSION_1);
        out.extend_from_slice(&self.id.0);
        let aad = field_aad(&out, associated_data);
        out.extend_from_slice(nonce);
        self.aead.seal_into(nonce, &aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Decrypt one field. A field of another data key, other associated data, or any changed
    /// byte fails with [`Error::Decryption`] and returns nothing.
    pub fn decrypt(&self, field: &[u8], associated_data: &[u8]) -> Result<Vec<u8>> {
        let parsed = parse(field)?;
        if parsed.key_id != self.id {
            return Err(Error::Decryption);
        }
        let aad = field_aad(parsed.header, associated_data);
        self.aead.open(&parsed.nonce, &aad, parsed.body)
    }
}

/// `header || associated data`. Small, so one allocation beats a streaming GHASH API.
fn field_aad(header: &[u8], associated_data: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + associated_data.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(associated_data);
    aad
}
