//! ML-KEM-768 (FIPS 203) through libcrux, with our own zeroizing key holder.
//!
//! libcrux's key types do not zeroize themselves, so the private key lives inside
//! [`MlKemPrivateKey`], whose `Drop` wipes it.

use libcrux_ml_kem::mlkem768::{self, MlKem768Ciphertext, MlKem768PrivateKey, MlKem768PublicKey};
use std::sync::OnceLock;

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

/// A validated encapsulation key. On its first encapsulation it is *unpacked* (the public matrix
/// Â and t̂ decoded and expanded once) and kept so, which makes every later encapsulation cheaper:
/// 41 k instead of 105 k instructions (callgrind, docs/BENCHMARKS.md). Unpacking is lazy because
/// keys that never encapsulate (a private key's own public half, a key being exported) should not
/// pay for it. The AVX2 form is used when the CPU has AVX2 (the check libcrux's own dispatch
/// makes), the portable one otherwise. Public data only: nothing here needs wiping.
pub(crate) struct MlKemPublicKey {
    packed: MlKem768PublicKey,
    unpacked: OnceLock<Unpacked>,
}

/// The unpacked forms (about 6 KiB, boxed).
enum Unpacked {
    Avx2(Box<mlkem768::avx2::unpacked::MlKem768PublicKeyUnpacked>),
    Portable(Box<mlkem768::portable::unpacked::MlKem768PublicKeyUnpacked>),
}

impl Unpacked {
    fn new(packed: &MlKem768PublicKey) -> Unpacked {
        if libcrux_platform::simd256_support() {
            use mlkem768::avx2::unpacked;
            let mut key = Box::new(unpacked::init_public_key());
            unpacked::unpacked_public_key(packed, &mut key);
            Unpacked::Avx2(key)
        } else {
            use mlkem768::portable::unpacked;
            let mut key = Box::new(unpacked::init_public_key());
            unpacked::unpacked_public_key(packed, &mut key);
            Unpacked::Portable(key)
        }
    }
}

impl MlKemPublicKey {
    pub(crate) fn new(pk: &[u8; PUBLIC_KEY_LEN]) -> Option<Self> {
        validate_public_key(pk).then(|| MlKemPublicKey {
            packed: MlKem768PublicKey::from(pk),
            unpacked: OnceLock::new(),
        })
    }

    /// `ML-KEM.Encaps_internal(ek, m)`: returns (ciphertext, shared secret).
    pub(crate) fn encaps(&self, m: &[u8; 32]) -> ([u8; CIPHERTEXT_LEN], [u8; 32]) {
        let (ct, ss) = match self.unpacked.get_or_init(|| Unpacked::new(&self.packed)) {
            Unpacked::Avx2(key) => mlkem768::avx2::unpacked::encapsulate(key, *m),
            Unpacked::Portable(key) => mlkem768::portable::unpacked::encapsulate(key, *m),
        };
        (*ct.as_slice(), ss)
    }

    /// The same encapsulation through the portable code whatever the CPU, for the test that both
    /// forms agree.
    #[cfg(test)]
    pub(crate) fn encaps_portable(
        pk: &[u8; PUBLIC_KEY_LEN],
        m: &[u8; 32],
    ) -> ([u8; CIPHERTEXT_LEN], [u8; 32]) {
        let (ct, ss) = mlkem768::portable::encapsulate(&MlKem768PublicKey::from(pk), *m);
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
