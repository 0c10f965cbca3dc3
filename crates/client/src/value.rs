//! Typed field values: how a Rust value becomes the plaintext of one field, and back.
//!
//! | Rust type | Plaintext | Notes |
//! |---|---|---|
//! | `str`, `String` | UTF-8 bytes | decrypts to `String` or [`SecretString`] |
//! | `[u8]`, `Vec<u8>`, `[u8; N]` | the bytes | decrypts to `Vec<u8>` or `Zeroizing<Vec<u8>>` |
//! | `i64`, `u64` | 8 bytes big-endian | every value has the same length |
//! | [`Json<T>`] | `serde_json` encoding of `T` | any `Serialize` / `DeserializeOwned` type |
//!
//! The type is not stored: decrypt with the type you encrypted (an `i64` read as `String` fails
//! or yields garbage). A ciphertext reveals its plaintext's **length** (39 bytes more); integers
//! have a fixed length, strings and JSON do not — pad them yourself if length is sensitive.

use core::ops::Deref;

use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The plaintext of one field, borrowed from the value or encoded into a buffer wiped on drop.
pub enum Plaintext<'a> {
    /// The value's own bytes.
    Borrowed(&'a [u8]),
    /// An encoding of the value, zeroized on drop.
    Owned(Zeroizing<Vec<u8>>),
}

impl Deref for Plaintext<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Plaintext::Borrowed(b) => b,
            Plaintext::Owned(v) => v,
        }
    }
}

/// A value that can be encrypted as one field.
pub trait EncryptValue {
    /// The plaintext bytes of this value.
    fn to_plaintext(&self) -> Result<Plaintext<'_>>;
}

/// A value that can be decrypted from one field.
pub trait DecryptValue: Sized {
    /// Decode the plaintext bytes (wiped after this call returns).
    fn from_plaintext(plaintext: Zeroizing<Vec<u8>>) -> Result<Self>;
}

impl<T: EncryptValue + ?Sized> EncryptValue for &T {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        (**self).to_plaintext()
    }
}

impl EncryptValue for str {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        Ok(Plaintext::Borrowed(self.as_bytes()))
    }
}

impl EncryptValue for String {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        Ok(Plaintext::Borrowed(self.as_bytes()))
    }
}

impl EncryptValue for [u8] {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        Ok(Plaintext::Borrowed(self))
    }
}

impl<const N: usize> EncryptValue for [u8; N] {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        Ok(Plaintext::Borrowed(self))
    }
}

impl EncryptValue for Vec<u8> {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        Ok(Plaintext::Borrowed(self))
    }
}

impl EncryptValue for i64 {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        Ok(Plaintext::Owned(Zeroizing::new(
            self.to_be_bytes().to_vec(),
        )))
    }
}

impl EncryptValue for u64 {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        Ok(Plaintext::Owned(Zeroizing::new(
            self.to_be_bytes().to_vec(),
        )))
    }
}

impl DecryptValue for String {
    fn from_plaintext(mut plaintext: Zeroizing<Vec<u8>>) -> Result<Self> {
        let bytes = core::mem::take(&mut *plaintext);
        String::from_utf8(bytes).map_err(|e| {
            // Wipe the rejected bytes too.
            drop(Zeroizing::new(e.into_bytes()));
            Error::InvalidValue("not UTF-8".into())
        })
    }
}

impl DecryptValue for SecretString {
    fn from_plaintext(plaintext: Zeroizing<Vec<u8>>) -> Result<Self> {
        String::from_plaintext(plaintext).map(SecretString::from)
    }
}

impl DecryptValue for Vec<u8> {
    fn from_plaintext(mut plaintext: Zeroizing<Vec<u8>>) -> Result<Self> {
        Ok(core::mem::take(&mut *plaintext))
    }
}

impl DecryptValue for Zeroizing<Vec<u8>> {
    fn from_plaintext(plaintext: Zeroizing<Vec<u8>>) -> Result<Self> {
        Ok(plaintext)
    }
}

fn eight(plaintext: &[u8]) -> Result<[u8; 8]> {
    plaintext.try_into().map_err(|_| {
        Error::InvalidValue(format!("{} bytes, not an 8-byte integer", plaintext.len()))
    })
}

impl DecryptValue for i64 {
    fn from_plaintext(plaintext: Zeroizing<Vec<u8>>) -> Result<Self> {
        Ok(i64::from_be_bytes(eight(&plaintext)?))
    }
}

impl DecryptValue for u64 {
    fn from_plaintext(plaintext: Zeroizing<Vec<u8>>) -> Result<Self> {
        Ok(u64::from_be_bytes(eight(&plaintext)?))
    }
}

/// Encrypt any serde value as its JSON encoding: `record.encrypt("address", &Json(&address))`,
/// `opened.decrypt::<Json<Address>>("address", &column)?.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> EncryptValue for Json<T> {
    fn to_plaintext(&self) -> Result<Plaintext<'_>> {
        serde_json::to_vec(&self.0)
            .map(|v| Plaintext::Owned(Zeroizing::new(v)))
            .map_err(|e| Error::InvalidValue(format!("cannot encode as JSON: {e}")))
    }
}

impl<T: DeserializeOwned> DecryptValue for Json<T> {
    fn from_plaintext(plaintext: Zeroizing<Vec<u8>>) -> Result<Self> {
        serde_json::from_slice(&plaintext)
            .map(Json)
            .map_err(|e| Error::InvalidValue(format!("not the expected JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round<T: EncryptValue + DecryptValue + PartialEq + core::fmt::Debug>(v: T) {
        let p = Zeroizing::new(v.to_plaintext().unwrap().to_vec());
        assert_eq!(T::from_plaintext(p).unwrap(), v);
    }

    #[test]
    fn round_trips() {
        round(String::from("héllo"));
        round(vec![0u8, 1, 255]);
        round(i64::MIN);
        round(-1i64);
        round(u64::MAX);
        round(Json(vec![("a".to_owned(), 1)]));
    }

    #[test]
    fn wrong_shapes_fail() {
        assert!(i64::from_plaintext(Zeroizing::new(vec![1, 2, 3])).is_err());
        assert!(String::from_plaintext(Zeroizing::new(vec![0xff])).is_err());
        assert!(Json::<u32>::from_plaintext(Zeroizing::new(b"\"x\"".to_vec())).is_err());
    }
}
