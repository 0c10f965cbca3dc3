//! Secret types must not print, must not clone, and must not leak through errors.

use std::marker::PhantomData;

use crate::{
    DataKey, EncryptionContext, Error, FieldKey, KeyId, KeyRef, RootKey, TenantId, TenantPrivateKey,
};

/// Compile-time trait probes: the inherent const wins only when the bound holds.
struct Probe<T>(PhantomData<T>);
trait NotDebug {
    const DEBUG: bool = false;
}
impl<T> NotDebug for Probe<T> {}
impl<T: std::fmt::Debug> Probe<T> {
    #[allow(dead_code)]
    const DEBUG: bool = true;
}
struct CloneProbe<T>(PhantomData<T>);
trait NotClone {
    const CLONE: bool = false;
}
impl<T> NotClone for CloneProbe<T> {}
impl<T: Clone> CloneProbe<T> {
    #[allow(dead_code)]
    const CLONE: bool = true;
}
struct DisplayProbe<T>(PhantomData<T>);
trait NotDisplay {
    const DISPLAY: bool = false;
}
impl<T> NotDisplay for DisplayProbe<T> {}
impl<T: std::fmt::Display> DisplayProbe<T> {
    #[allow(dead_code)]
    const DISPLAY: bool = true;
}

macro_rules! assert_secret_type {
    ($t:ty) => {
        assert!(
            !Probe::<$t>::DEBUG,
            concat!(stringify!($t), " must not implement Debug")
        );
        assert!(
            !CloneProbe::<$t>::CLONE,
            concat!(stringify!($t), " must not implement Clone")
        );
        assert!(
            !DisplayProbe::<$t>::DISPLAY,
            concat!(stringify!($t), " must not implement Display")
        );
    };
}

#[test]
fn secret_types_have_no_debug_display_or_clone() {
    assert_secret_type!(RootKey);
    assert_secret_type!(TenantPrivateKey);
    assert_secret_type!(DataKey);
    assert_secret_type!(FieldKey);
    // The probes themselves work: a type that has the traits is detected.
    const { assert!(Probe::<KeyRef>::DEBUG && CloneProbe::<KeyRef>::CLONE) };
    const { assert!(DisplayProbe::<TenantId>::DISPLAY) };
}

fn key_ref() -> KeyRef {
    KeyRef {
        tenant: TenantId::from_bytes([1; 16]),
        key: KeyId::from_bytes([2; 16]),
        version: 1,
    }
}

#[test]
fn public_types_print_no_key_material() {
    let private = TenantPrivateKey::generate(key_ref()).unwrap();
    let public = private.public_key();
    let shown = format!("{public:?}");
    assert!(shown.contains(&public.fingerprint().to_string()), "{shown}");
    // Not even a 4-byte window of the public key shows up (hex or decimal).
    let pk_hex = hex::encode(public.xwing_bytes());
    for window in pk_hex.as_bytes().chunks(8) {
        assert!(
            !shown.contains(std::str::from_utf8(window).unwrap()),
            "{shown}"
        );
    }
    assert!(shown.len() < 300, "{shown}");

    let (data_key, wrapped) = public.generate_data_key(&EncryptionContext::new()).unwrap();
    let dk_hex = hex::encode(data_key.expose_secret());
    let shown = format!("{wrapped:?}");
    assert!(!shown.contains(&dk_hex[..16]));
}

#[test]
fn errors_carry_no_secret_material() {
    let private = TenantPrivateKey::generate(key_ref()).unwrap();
    let (data_key, wrapped) = private
        .public_key()
        .generate_data_key(&EncryptionContext::new())
        .unwrap();
    let mut other = EncryptionContext::new();
    other.insert("k", "v");
    let err = private.unwrap_data_key(&wrapped, &other).err().unwrap();
    assert_eq!(err, Error::Decryption);
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&hex::encode(data_key.expose_secret())[..8]));
    assert_eq!(text, "decryption failed Decryption");
}
