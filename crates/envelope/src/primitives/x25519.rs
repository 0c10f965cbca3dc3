//! X25519 (RFC 7748) that refuses a non-contributory result.

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// `X25519(scalar, point)`. An all-zero result — the peer sent a small-order point — is refused:
/// it would make the X25519 half of the hybrid contribute nothing.
pub(crate) fn diffie_hellman(
    scalar: &StaticSecret,
    point: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>> {
    let shared = scalar.diffie_hellman(&PublicKey::from(*point));
    if !shared.was_contributory() {
        return Err(Error::Decryption);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// `X25519(scalar, 9)`: the public key for a scalar.
pub(crate) fn public_key(scalar: &StaticSecret) -> [u8; 32] {
    PublicKey::from(scalar).to_bytes()
}
