//! Identifiers bound into every format: which tenant, which key, which version.

use core::fmt;

use crate::error::Result;
use crate::primitives::fill_random;

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// 16 opaque bytes, shown as 32 lowercase hex digits. The service assigns them at random so
        /// that a reused *name* never lets an old blob open under a new key.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Wrap 16 bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(bytes)
            }

            /// The 16 bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// A fresh random identifier from the OS CSPRNG.
            pub fn random() -> Result<Self> {
                let mut bytes = [0u8; 16];
                fill_random(&mut bytes)?;
                Ok($name(bytes))
            }

            /// Parse 32 hex digits (either case). `None` for anything else.
            pub fn from_hex(s: &str) -> Option<Self> {
                parse_hex::<16>(s).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

id16!(
    /// Identifies a tenant.
    TenantId
);
id16!(
    /// Identifies one key of a tenant (all its versions share the id).
    KeyId
);

/// One version of one tenant key: what a wrapped data key, a sealed private key and an exported
/// public key are bound to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KeyRef {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The key.
    pub key: KeyId,
    /// The key version, starting at 1.
    pub version: u32,
}

/// Lowercase hex, no allocation.
pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}
