//! ML-KEM-768 (FIPS 203) through libcrux, with our own wiping key holder.
//!
//! libcrux's key types do not zeroize themselves, so the private key lives inside
//! [`MlKemPrivateKey`], whose `Drop` wipes it.

use libcrux_ml_kem::mlkem768::{self, MlKem768Ciphertext, MlKem768PublicKey};
use std::sync::OnceLock;

/// Encapsulation key length (FIPS 203, ML-KEM-768).
pub(crate) const PUBLIC_KEY_LEN: usize = 1184;
/// Ciphertext length.
pub(crate) const CIPHERTEXT_LEN: usize = 1088;

/// The seed whose key pair overwrites a private key when it is dropped: public, fixed.
const WIPE_SEED: [u8; 64] = [0; 64];

/// An ML-KEM-768 decapsulation key, kept *unpacked* (secret vector in NTT form, public matrix Â
/// sampled, H(ek) hashed) so that a decapsulation does not decode and expand the key again: about
/// half the time of the serialized-key API (docs/BENCHMARKS.md, `decaps/libcrux_unpacked`). AVX2
/// form when the CPU has AVX2 (the check libcrux's own dispatch makes), portable otherwise.
///
/// Wiping: libcrux's unpacked types have no `Zeroize` and private fields, and this crate forbids
/// `unsafe`. So `Drop` regenerates the key pair *in place* from a fixed public seed — every secret
/// field (the NTT secret vector, the implicit-rejection value) is overwritten through `&mut` — and
/// then passes the memory to `black_box`, so the compiler cannot drop those stores as dead. A test
/// checks that a wiped key is exactly the fixed-seed key.
pub(crate) struct MlKemPrivateKey(UnpackedPrivate);

enum UnpackedPrivate {
    Avx2(Box<mlkem768::avx2::unpacked::MlKem768KeyPairUnpacked>),
    Portable(Box<mlkem768::portable::unpacked::MlKem768KeyPairUnpacked>),
}

impl Drop for MlKemPrivateKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// `ML-KEM.KeyGen_internal(d, z)` with `seed = d || z`, generated straight into its heap slot.
pub(crate) fn keygen(seed: &[u8; 64]) -> (MlKemPrivateKey, [u8; PUBLIC_KEY_LEN]) {
    let (key, public) = if libcrux_platform::simd256_support() {
        use mlkem768::avx2::unpacked;
        let mut key = Box::new(unpacked::init_key_pair());
        unpacked::generate_key_pair_mut(*seed, &mut key);
        let public = unpacked::key_pair_serialized_public_key(&key);
        (UnpackedPrivate::Avx2(key), public)
    } else {
        use mlkem768::portable::unpacked;
        let mut key = Box::new(unpacked::init_key_pair());
        unpacked::generate_key_pair_mut(*seed, &mut key);
        let public = unpacked::key_pair_serialized_public_key(&key);
        (UnpackedPrivate::Portable(key), public)
    };
    (MlKemPrivateKey(key), *public.as_slice())
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
        let ct = MlKem768Ciphertext::from(ct);
        match &self.0 {
            UnpackedPrivate::Avx2(key) => mlkem768::avx2::unpacked::decapsulate(key, &ct),
            UnpackedPrivate::Portable(key) => mlkem768::portable::unpacked::decapsulate(key, &ct),
        }
    }

    /// Overwrite the key with the fixed-seed key pair (see the type's docs).
    fn wipe(&mut self) {
        match &mut self.0 {
            UnpackedPrivate::Avx2(key) => {
                mlkem768::avx2::unpacked::generate_key_pair_mut(WIPE_SEED, key);
                std::hint::black_box(&mut **key);
            }
            UnpackedPrivate::Portable(key) => {
                mlkem768::portable::unpacked::generate_key_pair_mut(WIPE_SEED, key);
                std::hint::black_box(&mut **key);
            }
        }
    }
}

#[cfg(test)]
impl MlKemPrivateKey {
    /// The FIPS 203 decapsulation key encoding, for known-answer tests.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            UnpackedPrivate::Avx2(key) => {
                mlkem768::avx2::unpacked::key_pair_serialized_private_key(key)
                    .as_slice()
                    .to_vec()
            }
            UnpackedPrivate::Portable(key) => {
                mlkem768::portable::unpacked::key_pair_serialized_private_key(key)
                    .as_slice()
                    .to_vec()
            }
        }
    }

    /// Wipe without dropping, for the test that a wiped key holds nothing of the old one.
    pub(crate) fn wipe_for_test(&mut self) {
        self.wipe();
    }
}
