//! AES-256-GCM with a 96-bit nonce and a 128-bit tag.
//!
//! `open` verifies the tag before it decrypts (aes-gcm 0.11 does) and writes into a fresh buffer,
//! so a failed open neither returns nor leaves plaintext anywhere (cf. RUSTSEC-2023-0096, where a
//! caller's in-place buffer kept decrypted bytes after a tag failure).

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// Nonce length in bytes.
pub(crate) const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub(crate) const TAG_LEN: usize = 16;

/// An expanded AES-256-GCM key (round keys and GHASH key are zeroized on drop by aes-gcm).
pub(crate) struct AeadKey(Aes256Gcm);

impl AeadKey {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        AeadKey(Aes256Gcm::new(key.into()))
    }

    /// Encrypt `plaintext`, appending ciphertext and tag to `out`.
    pub(crate) fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag =
            self.0
                .encrypt_inout_detached(&Nonce::from(*nonce), aad, (&mut out[start..]).into());
        match tag {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(_) => {
                out[start..].zeroize();
                out.truncate(start);
                Err(Error::TooLarge)
            }
        }
    }

    /// Verify and decrypt `ciphertext || tag` into a new buffer.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Vec<u8>> {
        let body_len = ciphertext_and_tag
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::Decryption)?;
        let (body, tag) = ciphertext_and_tag.split_at(body_len);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| Error::Decryption)?;
        let mut out = body.to_vec();
        match self.0.decrypt_inout_detached(
            &Nonce::from(*nonce),
            aad,
            out.as_mut_slice().into(),
            &tag.into(),
        ) {
            Ok(()) => Ok(out),
            Err(_) => {
                // Holds only ciphertext (the tag is checked first), but leave nothing behind.
                out.zeroize();
                Err(Error::Decryption)
            }
        }
    }
}
