//! X-Wing: the hybrid X25519 + ML-KEM-768 KEM of draft-connolly-cfrg-xwing-kem (draft 06).
//!
//! ```text
//! expand(sk):  e = SHAKE256(sk, 96); (dk_M, pk_M) = ML-KEM-768.KeyGen_internal(e[0:32], e[32:64])
//!              sk_X = e[64:96]; pk_X = X25519(sk_X, 9)
//! pk           = pk_M || pk_X                                          (1216 bytes)
//! encaps(eseed[64]): (ct_M, ss_M) = ML-KEM-768.Encaps_internal(pk_M, eseed[0:32])
//!              ek_X = eseed[32:64]; ct_X = X25519(ek_X, 9); ss_X = X25519(ek_X, pk_X)
//! ct           = ct_M || ct_X                                          (1120 bytes)
//! ss           = SHA3-256(ss_M || ss_X || ct_X || pk_X || "\.//^\")
//! ```
//!
//! Unlike the `x-wing` 0.1.1 crate, the private key is expanded once ([`DecapsulationKey::from_seed`])
//! and kept expanded, so decapsulation costs one ML-KEM decaps plus one X25519, not a key
//! generation too. We also refuse a non-contributory (all-zero) X25519 share on both sides.

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::primitives::mlkem;
use crate::primitives::x25519::{EphemeralScalar, FixedPoint, X25519Secret};

/// X-Wing private key seed length.
pub(crate) const SEED_LEN: usize = 32;
/// X-Wing public key length: ML-KEM-768 encapsulation key + X25519 public key.
pub(crate) const PUBLIC_KEY_LEN: usize = mlkem::PUBLIC_KEY_LEN + 32;
/// X-Wing ciphertext length: ML-KEM-768 ciphertext + X25519 ephemeral public key.
pub(crate) const CIPHERTEXT_LEN: usize = mlkem::CIPHERTEXT_LEN + 32;
/// Randomness consumed by one encapsulation.
pub(crate) const ENCAPS_SEED_LEN: usize = 64;

/// The X-Wing combiner label, `\.//^\`.
const LABEL: &[u8; 6] = b"\\.//^\\";

/// An expanded X-Wing private key. Every part zeroizes itself on drop.
pub(crate) struct DecapsulationKey {
    mlkem: mlkem::MlKemPrivateKey,
    x25519: X25519Secret,
    /// pk_X, needed by the combiner.
    x25519_public: [u8; 32],
}

/// A validated X-Wing public key.
pub(crate) struct EncapsulationKey {
    mlkem: mlkem::MlKemPublicKey,
    /// pk_X: every encapsulation multiplies it with a fresh scalar (a table once in heavy use).
    x25519_public: FixedPoint,
}

impl DecapsulationKey {
    /// Expand a 32-byte seed into the private key and its 1216-byte public key.
    pub(crate) fn from_seed(seed: &[u8; SEED_LEN]) -> Result<(Self, [u8; PUBLIC_KEY_LEN])> {
        let mut expanded = Zeroizing::new([0u8; 96]);
        libcrux_sha3::shake256_ema(&mut expanded[..], seed);
        let mut mlkem_seed = Zeroizing::new([0u8; 64]);
        mlkem_seed.copy_from_slice(&expanded[..64]);
        let (mlkem, mlkem_public) = mlkem::keygen(&mlkem_seed);
        let mut x_scalar = Zeroizing::new([0u8; 32]);
        x_scalar.copy_from_slice(&expanded[64..]);
        let x25519 = X25519Secret::from_bytes(&x_scalar)?;
        let x25519_public = x25519.public_key()?;

        let mut public = [0u8; PUBLIC_KEY_LEN];
        public[..mlkem::PUBLIC_KEY_LEN].copy_from_slice(&mlkem_public);
        public[mlkem::PUBLIC_KEY_LEN..].copy_from_slice(&x25519_public);
        Ok((
            DecapsulationKey {
                mlkem,
                x25519,
                x25519_public,
            },
            public,
        ))
    }

    /// Recover the shared secret from a ciphertext.
    ///
    /// ML-KEM rejects implicitly (a wrong ciphertext yields a pseudo-random secret, and the AEAD
    /// above us then fails); a small-order `ct_X` is refused here explicitly. That refusal depends
    /// only on the public ciphertext, so it reveals nothing about the key.
    pub(crate) fn decapsulate(&self, ct: &[u8; CIPHERTEXT_LEN]) -> Result<Zeroizing<[u8; 32]>> {
        let (ct_m, ct_x) = split_ciphertext(ct);
        let ss_m = Zeroizing::new(self.mlkem.decaps(&ct_m));
        let ss_x = self.x25519.diffie_hellman(&ct_x)?;
        Ok(combine(&ss_m, &ss_x, &ct_x, &self.x25519_public))
    }
}

impl EncapsulationKey {
    /// Parse and validate a 1216-byte public key.
    pub(crate) fn new(public: &[u8; PUBLIC_KEY_LEN]) -> Result<Self> {
        let mut pk_m = [0u8; mlkem::PUBLIC_KEY_LEN];
        let mut x25519_public = [0u8; 32];
        pk_m.copy_from_slice(&public[..mlkem::PUBLIC_KEY_LEN]);
        x25519_public.copy_from_slice(&public[mlkem::PUBLIC_KEY_LEN..]);
        let mlkem = mlkem::MlKemPublicKey::new(&pk_m).ok_or(Error::InvalidPublicKey)?;
        Ok(EncapsulationKey {
            mlkem,
            x25519_public: FixedPoint::new(x25519_public),
        })
    }

    /// Encapsulate with fresh randomness from the OS.
    pub(crate) fn encapsulate(&self) -> Result<([u8; CIPHERTEXT_LEN], Zeroizing<[u8; 32]>)> {
        let mut eseed = Zeroizing::new([0u8; ENCAPS_SEED_LEN]);
        crate::primitives::fill_random(&mut eseed[..])?;
        self.encapsulate_with_seed(&eseed)
    }

    /// Encapsulate with caller-supplied randomness: fresh from the OS (a data key draws its seed
    /// together with its key and nonce), or a known-answer test's seed. Reusing `eseed` breaks
    /// the KEM.
    pub(crate) fn encapsulate_with_seed(
        &self,
        eseed: &[u8; ENCAPS_SEED_LEN],
    ) -> Result<([u8; CIPHERTEXT_LEN], Zeroizing<[u8; 32]>)> {
        let mut m = Zeroizing::new([0u8; 32]);
        m.copy_from_slice(&eseed[..32]);
        let mut ek_x = Zeroizing::new([0u8; 32]);
        ek_x.copy_from_slice(&eseed[32..]);
        let ek_x = EphemeralScalar::from_bytes(&ek_x)?;
        let ct_x = ek_x.public_key()?;
        // A low-order pk_X gives an all-zero share: refuse to wrap to such a key.
        let ss_x = self
            .x25519_public
            .diffie_hellman(&ek_x)
            .map_err(|e| match e {
                Error::Decryption => Error::InvalidPublicKey,
                other => other,
            })?;
        let (ct_m, ss_m) = self.mlkem.encaps(&m);
        let ss_m = Zeroizing::new(ss_m);

        let mut ct = [0u8; CIPHERTEXT_LEN];
        ct[..mlkem::CIPHERTEXT_LEN].copy_from_slice(&ct_m);
        ct[mlkem::CIPHERTEXT_LEN..].copy_from_slice(&ct_x);
        Ok((
            ct,
            combine(&ss_m, &ss_x, &ct_x, self.x25519_public.as_bytes()),
        ))
    }

    /// Whether pk_X's table is in use (tests).
    #[cfg(test)]
    pub(crate) fn has_x25519_table(&self) -> bool {
        self.x25519_public.has_table()
    }
}

/// Split `ct_M || ct_X`. The lengths are fixed by the type, so the copies cannot fail.
fn split_ciphertext(ct: &[u8; CIPHERTEXT_LEN]) -> ([u8; mlkem::CIPHERTEXT_LEN], [u8; 32]) {
    let mut ct_m = [0u8; mlkem::CIPHERTEXT_LEN];
    let mut ct_x = [0u8; 32];
    ct_m.copy_from_slice(&ct[..mlkem::CIPHERTEXT_LEN]);
    ct_x.copy_from_slice(&ct[mlkem::CIPHERTEXT_LEN..]);
    (ct_m, ct_x)
}

/// The X-Wing combiner (draft 06: label last).
fn combine(
    ss_m: &[u8; 32],
    ss_x: &[u8; 32],
    ct_x: &[u8; 32],
    pk_x: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let mut input = Zeroizing::new([0u8; 32 * 4 + LABEL.len()]);
    input[..32].copy_from_slice(ss_m);
    input[32..64].copy_from_slice(ss_x);
    input[64..96].copy_from_slice(ct_x);
    input[96..128].copy_from_slice(pk_x);
    input[128..].copy_from_slice(LABEL);
    Zeroizing::new(libcrux_sha3::sha256(&input[..]))
}
