//! pqkms: an envelope-encryption key-management service with post-quantum hybrid keys.
//!
//! Layout: [`config`] and [`server`] start the service; [`http`] is the v1 API; [`auth`] checks
//! tokens and roles; [`keys`] creates and caches tenant keys (formats and crypto live in the
//! `pqkms-envelope` crate, and their heavy operations run on [`crypto_pool`]); [`store`] persists
//! to SQLite or PostgreSQL; [`audit`] is the hash chain; [`cli`] is the command line.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod auth;
pub mod bounded;
pub mod cli;
pub mod config;
pub mod crypto_pool;
pub mod http;
pub mod keys;
pub mod server;
pub mod store;

/// Current time as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Lower-case hex of `bytes`. `hex::encode` collects a `String` one `char` at a time; this writes
/// the digits into one buffer. Used for the digests, ids and hashes each request records.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    /// The same digits as the `hex` crate, for every byte value.
    #[test]
    fn hex_lower_matches_the_hex_crate() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(super::hex_lower(&all), hex::encode(&all));
        assert_eq!(super::hex_lower(&[]), "");
    }
}
