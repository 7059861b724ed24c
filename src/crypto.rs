//! Hashing and comparisons of secrets, in one place: SHA-256 for content
//! addresses and fingerprints, HMAC-SHA256 for tags and signatures, and a
//! constant-time compare (the `subtle` crate) wherever a secret is checked.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Lower-case hex SHA-256 of `bytes`: blob keys and raw-message hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// HMAC-SHA256 of the concatenated `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Compares in constant time (for equal lengths), so a forger learns nothing
/// from how long a comparison took.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(
            hmac_sha256(b"k", &[b"a", b"b"]),
            hmac_sha256(b"k", &[b"ab", b"c"])
        );
        assert_eq!(
            hmac_sha256(b"k", &[b"a", b"b"]),
            hmac_sha256(b"k", &[b"ab"])
        );
    }
}
