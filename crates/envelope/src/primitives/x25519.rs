//! X25519 (RFC 7748) that refuses a non-contributory result.
//!
//! The scalar multiplications are AWS-LC's (through `aws-lc-rs`): on x86_64 with BMI2/ADX that is
//! s2n-bignum's formally verified assembly, chosen at run time, with a portable fiat-crypto
//! fallback. Measured side by side with `x25519-dalek`'s Montgomery ladder on the same machine it
//! costs ~0.55x per shared secret and per public key (docs/CRYPTO.md, `cargo bench --bench
//! envelope -- x25519`), and X25519 was two thirds of every wrap and unwrap.
//!
//! The scalar lives in AWS-LC's heap as an `EVP_PKEY`; AWS-LC's `OPENSSL_free` wipes every
//! allocation it releases, so dropping an [`X25519Secret`] zeroizes the scalar as the rest of this
//! crate's secrets do.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// An X25519 scalar. No `Debug`, no `Clone`; wiped when dropped (see the module docs).
pub(crate) struct X25519Secret(PrivateKey);

impl X25519Secret {
    /// The scalar from 32 bytes (clamped by the multiplication, as RFC 7748 says).
    pub(crate) fn from_bytes(scalar: &[u8; 32]) -> Result<Self> {
        // Only a wrong length or a failed allocation can fail; the type rules out the first.
        PrivateKey::from_private_key(&X25519, scalar)
            .map(X25519Secret)
            .map_err(|_| Error::Primitive)
    }

    /// `X25519(scalar, 9)`: the public key for this scalar.
    pub(crate) fn public_key(&self) -> Result<[u8; 32]> {
        let public = self.0.compute_public_key().map_err(|_| Error::Primitive)?;
        <[u8; 32]>::try_from(public.as_ref()).map_err(|_| Error::Primitive)
    }

    /// `X25519(scalar, point)`. An all-zero result — the peer sent a small-order point — is
    /// refused: it would make the X25519 half of the hybrid contribute nothing.
    pub(crate) fn diffie_hellman(&self, point: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        let mut shared = Zeroizing::new([0u8; 32]);
        // AWS-LC refuses the all-zero output itself (`X25519()` returns 0, `agree` an error).
        agreement::agree(
            &self.0,
            UnparsedPublicKey::new(&X25519, point),
            Error::Decryption,
            |secret| {
                let secret: &[u8; 32] = secret.try_into().map_err(|_| Error::Decryption)?;
                shared.copy_from_slice(secret);
                Ok(())
            },
        )?;
        // Belt and braces: the contributory check does not depend on the library's choice.
        // Constant time: the bytes are the shared secret.
        if bool::from(shared.ct_eq(&[0u8; 32])) {
            return Err(Error::Decryption);
        }
        Ok(shared)
    }
}
