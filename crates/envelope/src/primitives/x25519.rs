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
//!
//! Encapsulation multiplies a fresh scalar with the same tenant public key every time. For a key in
//! heavy use, [`FixedPoint`] swaps the ladder for curve25519-dalek's precomputed table of that
//! point's multiples (radix 16, constant-time lookups), ~0.6x the ladder's time for 30 KiB per key.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use curve25519_dalek::edwards::EdwardsBasepointTable;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::traits::BasepointTable;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

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
        refuse_zero(shared)
    }
}

/// An all-zero shared secret (a small-order point) is refused. Constant time: the bytes are the
/// shared secret.
fn refuse_zero(shared: Zeroizing<[u8; 32]>) -> Result<Zeroizing<[u8; 32]>> {
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        return Err(Error::Decryption);
    }
    Ok(shared)
}

/// An encapsulation's ephemeral scalar, held both ways it is multiplied: as AWS-LC's key (`ct_X`,
/// and the ladder) and as bytes (a [`FixedPoint`]'s table). One constructor, so the two cannot
/// differ; the bytes are wiped on drop, the key as [`X25519Secret`] says.
pub(crate) struct EphemeralScalar {
    secret: X25519Secret,
    bytes: Zeroizing<[u8; 32]>,
}

impl EphemeralScalar {
    /// The scalar from 32 bytes (clamped by each multiplication).
    pub(crate) fn from_bytes(scalar: &[u8; 32]) -> Result<Self> {
        Ok(EphemeralScalar {
            secret: X25519Secret::from_bytes(scalar)?,
            bytes: Zeroizing::new(*scalar),
        })
    }

    /// `X25519(scalar, 9)`: the ephemeral public key (`ct_X`).
    pub(crate) fn public_key(&self) -> Result<[u8; 32]> {
        self.secret.public_key()
    }
}

/// Multiplications with one [`FixedPoint`] after which it builds its table. Building takes as
/// long as ~40 ladder multiplications (2.2 ms; 55 µs each) and saves ~21 µs per later use, so it
/// pays for itself after ~100 more uses (measured side by side in `cargo bench --bench envelope --
/// x25519`); with 30 KiB per table, a key used now and then never builds one.
pub(crate) const TABLE_AFTER_USES: u32 = 128;

/// A public X25519 point that many scalars are multiplied with: a tenant's `pk_X`, which every
/// encapsulation to that key multiplies with a fresh ephemeral scalar.
///
/// The first [`TABLE_AFTER_USES`] multiplications run AWS-LC's ladder ([`X25519Secret`]); the
/// one that reaches the count builds curve25519-dalek's radix-16 table of the point's multiples
/// (the point is public, so is the table), and later ones look the scalar's digits up in it, in
/// constant time, then map the Edwards result back to its Montgomery `u`. Same function as RFC
/// 7748's X25519 — the clamped scalar is used unreduced, so any small-order component of the point
/// is cleared as by the ladder — checked against Wycheproof and the ladder in tests. A point on the
/// twist has no Edwards form; it keeps the ladder.
pub(crate) struct FixedPoint {
    point: [u8; 32],
    /// Set once, by the multiplication that reaches [`TABLE_AFTER_USES`]: `None` for a twist point.
    table: OnceLock<Option<Box<EdwardsBasepointTable>>>,
    uses: AtomicU32,
}

impl FixedPoint {
    /// The point's raw 32 bytes (`pk_X` as given; each multiplication reads `u` from them masked
    /// and reduced, as RFC 7748 says).
    pub(crate) fn new(point: [u8; 32]) -> Self {
        FixedPoint {
            point,
            table: OnceLock::new(),
            uses: AtomicU32::new(0),
        }
    }

    /// The point's encoding, as given.
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.point
    }

    /// `X25519(scalar, point)`, refusing an all-zero result as [`X25519Secret::diffie_hellman`]
    /// does.
    pub(crate) fn diffie_hellman(&self, scalar: &EphemeralScalar) -> Result<Zeroizing<[u8; 32]>> {
        match self.table() {
            Some(table) => table_diffie_hellman(table, &scalar.bytes),
            None => scalar.secret.diffie_hellman(&self.point),
        }
    }

    /// The table, once built; counts a use and builds it on the use that reaches the threshold.
    fn table(&self) -> Option<&EdwardsBasepointTable> {
        if let Some(table) = self.table.get() {
            return table.as_deref();
        }
        // Exactly one caller sees the count reach the threshold; others keep using the ladder
        // until the table is in place.
        if self.uses.fetch_add(1, Ordering::Relaxed) != TABLE_AFTER_USES - 1 {
            return None;
        }
        self.build_table()
    }

    fn build_table(&self) -> Option<&EdwardsBasepointTable> {
        self.table
            .get_or_init(|| {
                // Either sign: [k](-P) and [k]P share their `u`.
                let edwards = MontgomeryPoint(self.point).to_edwards(0)?;
                Some(Box::new(EdwardsBasepointTable::create(&edwards)))
            })
            .as_deref()
    }

    /// Whether the table is in use (tests).
    #[cfg(test)]
    pub(crate) fn has_table(&self) -> bool {
        matches!(self.table.get(), Some(Some(_)))
    }

    /// Build the table now (tests: run vectors through both paths).
    #[cfg(test)]
    pub(crate) fn with_table_now(point: [u8; 32]) -> Self {
        let fixed = FixedPoint::new(point);
        fixed.build_table();
        fixed
    }
}

/// `[clamp(scalar)] P` from P's table, as its Montgomery `u`. The intermediate points are wiped;
/// copies of the scalar that curve25519-dalek makes on the stack are not (as with AWS-LC's).
fn table_diffie_hellman(
    table: &EdwardsBasepointTable,
    scalar: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>> {
    let mut point = table.mul_base_clamped(*scalar);
    let mut u = point.to_montgomery();
    point.zeroize();
    let shared = Zeroizing::new(u.to_bytes());
    u.zeroize();
    refuse_zero(shared)
}
