//! ML-KEM-768 (FIPS 203) through libcrux, with our own zeroizing key holder.
//!
//! libcrux's key types do not zeroize themselves, so the private key lives inside
//! [`MlKemPrivateKey`], whose `Drop` wipes it.

use libcrux_ml_kem::mlkem768::{self, MlKem768Ciphertext, MlKem768PrivateKey, MlKem768PublicKey};
use zeroize::Zeroize;

/// Encapsulation key length (FIPS 203, ML-KEM-768).
pub(crate) const PUBLIC_KEY_LEN: usize = 1184;
/// Ciphertext length.
pub(crate) const CIPHERTEXT_LEN: usize = 1088;

/// An ML-KEM-768 decapsulation key in FIPS 203 encoding (2400 bytes), wiped on drop.
pub(crate) struct MlKemPrivateKey(MlKem768PrivateKey);

impl Drop for MlKemPrivateKey {
    fn drop(&mut self) {
        self.0[0..].zeroize();
    }
}

/// `ML-KEM.KeyGen_internal(d, z)` with `seed = d || z`.
pub(crate) fn keygen(seed: &[u8; 64]) -> (MlKemPrivateKey, [u8; PUBLIC_KEY_LEN]) {
    let (sk, pk) = mlkem768::generate_key_pair(*seed).into_parts();
    (MlKemPrivateKey(sk), *pk.as_slice())
}

/// The FIPS 203 encapsulation-key check (every coefficient below q). Must pass before `encaps`.
pub(crate) fn validate_public_key(pk: &[u8; PUBLIC_KEY_LEN]) -> bool {
    mlkem768::validate_public_key(&MlKem768PublicKey::from(pk))
}

/// A validated encapsulation key.
pub(crate) struct MlKemPublicKey(MlKem768PublicKey);

impl MlKemPublicKey {
    pub(crate) fn new(pk: &[u8; PUBLIC_KEY_LEN]) -> Option<Self> {
        validate_public_key(pk).then(|| MlKemPublicKey(MlKem768PublicKey::from(pk)))
    }

    /// `ML-KEM.Encaps_internal(ek, m)`: returns (ciphertext, shared secret).
    pub(crate) fn encaps(&self, m: &[u8; 32]) -> ([u8; CIPHERTEXT_LEN], [u8; 32]) {
        let (ct, ss) = mlkem768::encapsulate(&self.0, *m);
        (*ct.as_slice(), ss)
    }
}

impl MlKemPrivateKey {
    /// `ML-KEM.Decaps(dk, c)`, with implicit rejection.
    pub(crate) fn decaps(&self, ct: &[u8; CIPHERTEXT_LEN]) -> [u8; 32] {
        mlkem768::decapsulate(&self.0, &MlKem768Ciphertext::from(ct))
    }
}

#[cfg(test)]
impl MlKemPrivateKey {
    /// The FIPS 203 decapsulation key encoding, for known-answer tests.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}
