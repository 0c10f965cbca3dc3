//! The wire formats, byte by byte in docs/FORMATS.md. Every format starts with a 4-byte magic
//! (2 bytes for the compact field format) and a version byte; every parser goes through [`Reader`],
//! so truncated and extended inputs fail the same typed way in all of them.

pub(crate) mod envelope;
pub(crate) mod field;
pub(crate) mod public_key;
pub(crate) mod sealed_key;
pub(crate) mod wrapped_key;

use crate::error::{Error, Result};
use crate::ids::{KeyId, KeyRef, TenantId};

/// The only format version this build writes and reads.
pub(crate) const VERSION_1: u8 = 1;

/// Algorithm id 1: X-Wing (draft 06) + HKDF-SHA256 + AES-256-GCM.
pub(crate) const ALG_XWING_HKDF_AES256GCM: u8 = 1;

/// Encoded size of a [`KeyRef`]: tenant id, key id, u32 version.
pub(crate) const KEY_REF_LEN: usize = 16 + 16 + 4;

/// A bounds-checked cursor over an input.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Reader { input, pos: 0 }
    }

    /// Check the magic and the version byte.
    pub(crate) fn header(&mut self, magic: &[u8]) -> Result<()> {
        let available = &self.input[self.pos..];
        if available.len() < magic.len() {
            // A prefix of the magic is a truncated input of this format; anything else is not ours.
            return Err(if magic.starts_with(available) {
                Error::Truncated
            } else {
                Error::BadMagic
            });
        }
        if self.take(magic.len())? != magic {
            return Err(Error::BadMagic);
        }
        match self.u8()? {
            VERSION_1 => Ok(()),
            v => Err(Error::UnsupportedVersion(v)),
        }
    }

    pub(crate) fn algorithm(&mut self, expected: u8) -> Result<()> {
        match self.u8()? {
            a if a == expected => Ok(()),
            a => Err(Error::UnsupportedAlgorithm(a)),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let slice = self.input.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn key_ref(&mut self) -> Result<KeyRef> {
        Ok(KeyRef {
            tenant: TenantId::from_bytes(self.array()?),
            key: KeyId::from_bytes(self.array()?),
            version: self.u32()?,
        })
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Everything not yet consumed.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.input[self.pos..];
        self.pos = self.input.len();
        rest
    }

    /// The input must end here.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(Error::TrailingBytes)
        }
    }
}

pub(crate) fn put_key_ref(out: &mut Vec<u8>, key_ref: &KeyRef) {
    out.extend_from_slice(key_ref.tenant.as_bytes());
    out.extend_from_slice(key_ref.key.as_bytes());
    out.extend_from_slice(&key_ref.version.to_be_bytes());
}
