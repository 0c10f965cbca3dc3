//! HKDF-SHA256 (RFC 5869).

use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::{Error, Result};

/// HKDF-SHA256 extract-and-expand into `out`. `info` is the concatenation of `info_parts`, passed
/// without copying. Fails only if `out` is longer than 255 * 32 bytes.
pub(crate) fn hkdf_sha256(
    salt: Option<&[u8]>,
    ikm: &[u8],
    info_parts: &[&[u8]],
    out: &mut [u8],
) -> Result<()> {
    Hkdf::<Sha256>::new(salt, ikm)
        .expand_multi_info(info_parts, out)
        .map_err(|_| Error::TooLarge)
}
