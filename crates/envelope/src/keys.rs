//! Key types. Secret ones ([`RootKey`], [`TenantPrivateKey`], [`DataKey`], [`FieldKey`](crate::FieldKey))
//! have no `Debug`, no `Display` and no `Clone`, and zeroize on drop: their bytes can reach neither
//! a log line nor a second copy by accident. [`TenantPublicKey`] prints as a short fingerprint.

use core::fmt;

use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};

use crate::error::Result;
use crate::ids::{KeyRef, write_hex};
use crate::primitives::{aead::AeadKey, fill_random, kdf::hkdf_sha256};
use crate::xwing;

/// Label of the sealing key derived from a root key.
const ROOT_SEAL_LABEL: &[u8] = b"pqkms/v1/root-seal-key";

fn random_secret() -> Result<SecretBox<[u8; 32]>> {
    let mut secret = SecretBox::new(Box::new([0u8; 32]));
    fill_random(secret.expose_secret_mut())?;
    Ok(secret)
}

fn secret_from(bytes: &[u8; 32]) -> SecretBox<[u8; 32]> {
    SecretBox::new(Box::new(*bytes))
}

/// The root key: 32 random bytes held outside the database. It seals tenant private keys
/// (see [`RootKey::seal_tenant_key`]). Its `version` is written into every sealed key so that a
/// root-key rotation knows what to re-seal.
pub struct RootKey {
    version: u32,
    secret: SecretBox<[u8; 32]>,
    /// AES-256-GCM key derived once: `HKDF-SHA256(ikm = root, info = "pqkms/v1/root-seal-key")`.
    pub(crate) seal_key: AeadKey,
}

impl RootKey {
    /// A fresh random root key.
    pub fn generate(version: u32) -> Result<Self> {
        Self::from_secret(version, random_secret()?)
    }

    /// A root key from its stored bytes. The caller should zeroize its own copy.
    pub fn from_bytes(version: u32, bytes: &[u8; 32]) -> Result<Self> {
        Self::from_secret(version, secret_from(bytes))
    }

    fn from_secret(version: u32, secret: SecretBox<[u8; 32]>) -> Result<Self> {
        let mut derived = zeroize::Zeroizing::new([0u8; 32]);
        hkdf_sha256(
            None,
            secret.expose_secret(),
            &[ROOT_SEAL_LABEL],
            &mut derived[..],
        )?;
        Ok(RootKey {
            version,
            secret,
            seal_key: AeadKey::new(&derived),
        })
    }

    /// The root key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The raw bytes, for writing the root key file. Handle with care.
    pub fn expose_secret(&self) -> &[u8; 32] {
        self.secret.expose_secret()
    }
}

/// A data key: 32 random bytes for AES-256-GCM, handed to the caller and wrapped to a tenant key.
pub struct DataKey(SecretBox<[u8; 32]>);

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<Self> {
        Ok(DataKey(random_secret()?))
    }

    /// A data key from bytes (for example a plaintext key returned by the service). The caller
    /// should zeroize its own copy.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        DataKey(secret_from(bytes))
    }

    /// The raw key bytes. Handle with care.
    pub fn expose_secret(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

/// One version of a tenant's hybrid (X-Wing) key pair, private half.
///
/// Holds the 32-byte X-Wing seed (what gets sealed and stored) and the expanded key (what
/// decapsulation uses), so the expensive expansion happens once per unseal, not per unwrap.
pub struct TenantPrivateKey {
    pub(crate) seed: SecretBox<[u8; xwing::SEED_LEN]>,
    pub(crate) decapsulation: xwing::DecapsulationKey,
    pub(crate) public: TenantPublicKey,
}

impl TenantPrivateKey {
    /// A new random key pair for `key_ref`.
    pub fn generate(key_ref: KeyRef) -> Result<Self> {
        let seed = random_secret()?;
        Self::from_seed(key_ref, seed)
    }

    /// Expand a seed. `pub(crate)`: seeds only come from `generate` or from unsealing.
    pub(crate) fn from_seed(key_ref: KeyRef, seed: SecretBox<[u8; 32]>) -> Result<Self> {
        let (decapsulation, public_bytes) =
            xwing::DecapsulationKey::from_seed(seed.expose_secret())?;
        let public = TenantPublicKey::new(key_ref, public_bytes)?;
        Ok(TenantPrivateKey {
            seed,
            decapsulation,
            public,
        })
    }

    /// Which tenant, key and version this is.
    pub fn key_ref(&self) -> &KeyRef {
        &self.public.key_ref
    }

    /// The matching public key.
    pub fn public_key(&self) -> &TenantPublicKey {
        &self.public
    }
}

/// One version of a tenant's hybrid key pair, public half: anyone holding it can wrap data keys
/// offline. Export it with [`TenantPublicKey::to_bytes`]; its [`Fingerprint`] identifies it.
pub struct TenantPublicKey {
    pub(crate) key_ref: KeyRef,
    pub(crate) xwing_bytes: Box<[u8; xwing::PUBLIC_KEY_LEN]>,
    pub(crate) encapsulation: xwing::EncapsulationKey,
    pub(crate) fingerprint: Fingerprint,
}

impl TenantPublicKey {
    pub(crate) fn new(key_ref: KeyRef, xwing_bytes: [u8; xwing::PUBLIC_KEY_LEN]) -> Result<Self> {
        let encapsulation = xwing::EncapsulationKey::new(&xwing_bytes)?;
        let mut key = TenantPublicKey {
            key_ref,
            xwing_bytes: Box::new(xwing_bytes),
            encapsulation,
            fingerprint: Fingerprint([0; 16]),
        };
        key.fingerprint = Fingerprint::of(&key.to_bytes());
        Ok(key)
    }

    /// Which tenant, key and version this is.
    pub fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }

    /// The fingerprint of the exported encoding.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The raw 1216-byte X-Wing public key (`pk_M || pk_X`).
    pub fn xwing_bytes(&self) -> &[u8; xwing::PUBLIC_KEY_LEN] {
        &self.xwing_bytes
    }
}

impl fmt::Debug for TenantPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantPublicKey")
            .field("key_ref", &self.key_ref)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// First 16 bytes of SHA-256 over a public key's exported encoding, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    pub(crate) fn of(encoding: &[u8]) -> Self {
        let digest = crate::primitives::sha256(&[encoding]);
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&digest[..16]);
        Fingerprint(fp)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}
