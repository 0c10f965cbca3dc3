//! Exported tenant public key: `"PQPK" | 0x01 | alg | key ref | X-Wing public key (1216)`.

use super::{ALG_XWING_HKDF_AES256GCM, KEY_REF_LEN, Reader, put_key_ref};
use crate::error::Result;
use crate::keys::TenantPublicKey;
use crate::xwing;

pub(crate) const MAGIC: &[u8; 4] = b"PQPK";
/// Total encoded length.
pub(crate) const LEN: usize = 4 + 1 + 1 + KEY_REF_LEN + xwing::PUBLIC_KEY_LEN;

impl TenantPublicKey {
    /// The exported encoding (1258 bytes), what the service's public-key endpoint returns.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(MAGIC);
        out.push(super::VERSION_1);
        out.push(ALG_XWING_HKDF_AES256GCM);
        put_key_ref(&mut out, &self.key_ref);
        out.extend_from_slice(&self.xwing_bytes[..]);
        out
    }

    /// Parse and validate an exported public key (ML-KEM modulus check included).
    pub fn from_bytes(input: &[u8]) -> Result<Self> {
        let mut r = Reader::new(input);
        r.header(MAGIC)?;
        r.algorithm(ALG_XWING_HKDF_AES256GCM)?;
        let key_ref = r.key_ref()?;
        let xwing_bytes = r.array::<{ xwing::PUBLIC_KEY_LEN }>()?;
        r.finish()?;
        TenantPublicKey::new(key_ref, xwing_bytes)
    }
}
