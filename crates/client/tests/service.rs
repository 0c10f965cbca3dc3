//! Against the real service on SQLite: round trips for every helper type, tenant/context/row
//! binding, tampering, cache limits (counted service calls), offline wrapping, typed errors.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Server, context};
use pqkms_client::envelope::Error as EnvelopeError;
use pqkms_client::{
    CacheLimits, EncryptedColumn, Error, ExposeSecret, Json, PinnedPublicKey, Role, SecretString,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    street: String,
    city: String,
    zip: Option<u32>,
}

fn is_field_decryption_failure(e: &Error) -> bool {
    matches!(e, Error::Crypto(EnvelopeError::Decryption))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_helper_type_round_trips() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let client = server.client(&acme.app, CacheLimits::default());
    let customers = client.encryptor("acme", "default", context(&[("table", "customers")]));

    let address = Address {
        street: "1 Analytical Way".into(),
        city: "London".into(),
        zip: None,
    };
    let row = "customers/42";
    let rec = customers.record(row).await.unwrap();
    let c_str = rec.encrypt("email", "ada@example.com").unwrap();
    let c_string = rec.encrypt("name", &String::from("Ada Lovelace")).unwrap();
    let c_bytes = rec.encrypt("photo", &vec![0u8, 1, 2, 255]).unwrap();
    let c_slice = rec.encrypt("slice", &b"raw"[..]).unwrap();
    let c_array = rec.encrypt("array", b"fixed").unwrap();
    let c_i64 = rec.encrypt("balance", &-1_234_567_i64).unwrap();
    let c_i64_min = rec.encrypt("min", &i64::MIN).unwrap();
    let c_u64 = rec.encrypt("visits", &u64::MAX).unwrap();
    let c_json = rec.encrypt("address", &Json(&address)).unwrap();
    let c_empty = rec.encrypt("empty", "").unwrap();
    let dek = rec.wrapped_key().as_bytes().to_vec();
    assert_eq!(c_str.as_bytes().len(), "ada@example.com".len() + 39);
    assert_eq!(c_str.data_key_id(), Some(rec.data_key_id()));

    let opened = customers.open(row, &dek).await.unwrap();
    assert_eq!(
        opened.decrypt::<String>("email", &c_str).unwrap(),
        "ada@example.com"
    );
    assert_eq!(
        opened.decrypt::<String>("name", &c_string).unwrap(),
        "Ada Lovelace"
    );
    assert_eq!(
        opened.decrypt::<Vec<u8>>("photo", &c_bytes).unwrap(),
        vec![0, 1, 2, 255]
    );
    assert_eq!(
        opened.decrypt::<Vec<u8>>("slice", &c_slice).unwrap(),
        b"raw"
    );
    assert_eq!(
        opened.decrypt::<Vec<u8>>("array", &c_array).unwrap(),
        b"fixed"
    );
    assert_eq!(
        opened.decrypt::<i64>("balance", &c_i64).unwrap(),
        -1_234_567
    );
    assert_eq!(opened.decrypt::<i64>("min", &c_i64_min).unwrap(), i64::MIN);
    assert_eq!(opened.decrypt::<u64>("visits", &c_u64).unwrap(), u64::MAX);
    assert_eq!(
        opened
            .decrypt::<Json<Address>>("address", &c_json)
            .unwrap()
            .0,
        address
    );
    assert_eq!(opened.decrypt::<String>("empty", &c_empty).unwrap(), "");
    let secret: SecretString = opened.decrypt("email", &c_str).unwrap();
    assert_eq!(secret.expose_secret(), "ada@example.com");
    let wiped: Zeroizing<Vec<u8>> = opened.decrypt("photo", &c_bytes).unwrap();
    assert_eq!(&wiped[..], &[0, 1, 2, 255]);

    // A value read as the wrong type is refused, not misread.
    assert!(matches!(
        opened.decrypt::<i64>("email", &c_str),
        Err(Error::InvalidValue(_))
    ));
    let c_bad_int = rec.encrypt("n", "abc").unwrap();
    assert!(matches!(
        opened.decrypt::<i64>("n", &c_bad_int),
        Err(Error::InvalidValue(_))
    ));

    // EncryptedRecord: the wrapped key once, fields by name; rebuilt from storage.
    let mut rec = customers.record("customers/7").await.unwrap();
    rec.add("email", "bob@example.com")
        .unwrap()
        .add("age", &41_i64)
        .unwrap()
        .add("address", &Json(&address))
        .unwrap();
    let record = rec.finish();
    assert_eq!(record.fields().len(), 3);
    let (dek, fields) = record.clone().into_parts();
    let stored = pqkms_client::EncryptedRecord::new(
        dek,
        fields
            .into_iter()
            .map(|(k, v)| (k, EncryptedColumn::from_bytes(v.into_bytes())))
            .collect::<BTreeMap<_, _>>(),
    );
    assert_eq!(stored, record);
    let opened = customers.open_record("customers/7", &stored).await.unwrap();
    assert_eq!(
        opened.field::<String>(&stored, "email").unwrap().as_deref(),
        Some("bob@example.com")
    );
    assert_eq!(opened.field::<i64>(&stored, "age").unwrap(), Some(41));
    assert_eq!(
        opened
            .field::<Json<Address>>(&stored, "address")
            .unwrap()
            .map(|j| j.0),
        Some(address)
    );
    assert_eq!(opened.field::<String>(&stored, "missing").unwrap(), None);

    // Raw AAD of the caller's own scheme.
    let rec = customers.record("ignored").await.unwrap();
    let raw = rec.encrypt_with_aad(b"payload", b"my-aad").unwrap();
    let opened = customers
        .open("ignored", rec.wrapped_key().as_bytes())
        .await
        .unwrap();
    assert_eq!(
        &opened.decrypt_with_aad(raw.as_bytes(), b"my-aad").unwrap()[..],
        b"payload"
    );
    assert!(opened.decrypt_with_aad(raw.as_bytes(), b"other").is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_level_data_key_calls_round_trip() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let client = server.client(&acme.app, CacheLimits::default());
    let ctx = context(&[("table", "users")]);
    let generated = client
        .generate_data_key("acme", "default", &ctx, true)
        .await
        .unwrap();
    assert_eq!(generated.version, 1);
    assert!(!format!("{generated:?}").contains(&format!(
        "{:?}",
        generated.plaintext.as_ref().map(|k| k.expose_secret())
    )));
    let plain = generated
        .plaintext
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    let opened = client
        .decrypt_data_key("acme", "default", generated.wrapped.as_bytes(), &ctx)
        .await
        .unwrap();
    assert_eq!(opened.expose_secret(), &plain);

    let no_plain = client
        .generate_data_key("acme", "default", &ctx, false)
        .await
        .unwrap();
    assert!(no_plain.plaintext.is_none());
    client
        .decrypt_data_key("acme", "default", no_plain.wrapped.as_bytes(), &ctx)
        .await
        .unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.data_keys_generated, stats.data_keys_decrypted),
        (2, 2)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tenant_context_row_or_field_fail() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    let ctx = context(&[("table", "customers")]);
    let acme_client = server.client(&acme.app, CacheLimits::default());
    let globex_client = server.client(&globex.app, CacheLimits::default());

    let enc = acme_client.encryptor("acme", "default", ctx.clone());
    let rec = enc.record("customers/1").await.unwrap();
    let email = rec.encrypt("email", "ada@example.com").unwrap();
    let dek = rec.wrapped_key().as_bytes().to_vec();
    // Warm the decrypt cache with the right context first: a wrong one must still miss.
    enc.open("customers/1", &dek).await.unwrap();

    // Another tenant (its own token, its own key) cannot open acme's wrapped key.
    let e = globex_client
        .encryptor("globex", "default", ctx.clone())
        .open("customers/1", &dek)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DecryptionFailed(_)), "{e:?}");
    assert_eq!(e.code(), Some("decryption_failed"));
    // And acme's token cannot even name globex.
    let e = acme_client
        .encryptor("globex", "default", ctx.clone())
        .open("customers/1", &dek)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(_)), "{e:?}");

    // Another context: the service refuses, whatever the cache holds.
    for other in [
        context(&[("table", "orders")]),
        context(&[]),
        context(&[("table", "customers"), ("row", "1")]),
    ] {
        let before = acme_client.stats().data_keys_decrypted;
        let e = acme_client
            .encryptor("acme", "default", other)
            .open("customers/1", &dek)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::DecryptionFailed(_)), "{e:?}");
        assert_eq!(acme_client.stats().data_keys_decrypted, before + 1);
    }
    // Another key of the same tenant.
    let admin = server.client(&acme.admin, CacheLimits::default());
    admin.create_key("acme", "billing").await.unwrap();
    let e = acme_client
        .encryptor("acme", "billing", ctx.clone())
        .open("customers/1", &dek)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DecryptionFailed(_)), "{e:?}");

    // Right key, wrong row or field: the field does not decrypt.
    let opened = enc.open("customers/2", &dek).await.unwrap();
    assert!(is_field_decryption_failure(
        &opened.decrypt::<String>("email", &email).unwrap_err()
    ));
    let opened = enc.open("customers/1", &dek).await.unwrap();
    assert!(is_field_decryption_failure(
        &opened.decrypt::<String>("name", &email).unwrap_err()
    ));
    assert_eq!(
        opened.decrypt::<String>("email", &email).unwrap(),
        "ada@example.com"
    );

    // A field of another record's data key does not decrypt under this one.
    let other = server.client(&acme.app, CacheLimits::disabled());
    let other_rec = other
        .encryptor("acme", "default", ctx.clone())
        .record("customers/1")
        .await
        .unwrap();
    let foreign = other_rec.encrypt("email", "eve@example.com").unwrap();
    assert!(is_field_decryption_failure(
        &opened.decrypt::<String>("email", &foreign).unwrap_err()
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_fields_and_wrapped_keys_fail() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let client = server.client(&acme.app, CacheLimits::disabled());
    let enc = client.encryptor("acme", "default", context(&[("t", "x")]));
    let rec = enc.record("r").await.unwrap();
    let field = rec.encrypt("f", "attack at dawn").unwrap();
    let dek = rec.wrapped_key().as_bytes().to_vec();
    let opened = enc.open("r", &dek).await.unwrap();

    // Every single-bit flip of every byte fails: header, key id, nonce, body and tag.
    for i in 0..field.as_bytes().len() {
        let mut bad = field.as_bytes().to_vec();
        bad[i] ^= 0x01;
        let e = opened.decrypt::<String>("f", &bad).unwrap_err();
        assert!(matches!(e, Error::Crypto(_)), "byte {i}: {e:?}");
    }
    // Truncated and extended.
    let bytes = field.as_bytes();
    assert!(
        opened
            .decrypt::<String>("f", &bytes[..bytes.len() - 1])
            .is_err()
    );
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(opened.decrypt::<String>("f", &longer).is_err());

    // A tampered wrapped key does not open at the service.
    for i in [0, 10, 60, 500, dek.len() - 1] {
        let mut bad = dek.clone();
        bad[i] ^= 0x80;
        let e = enc.open("r", &bad).await.unwrap_err();
        assert!(matches!(e, Error::DecryptionFailed(_)), "byte {i}: {e:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_limits_are_honoured() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let ctx = context(&[("table", "customers")]);

    // Fields per key: 4. Ten records of two fields: a key serves two records, then retires.
    let limits = CacheLimits {
        max_fields_per_key: 4,
        max_age: Duration::from_secs(3600),
        ..CacheLimits::default()
    };
    let client = server.client(&acme.app, limits);
    let enc = client.encryptor("acme", "default", ctx.clone());
    let mut stored = Vec::new();
    for i in 0..10 {
        let row = format!("customers/{i}");
        let rec = enc.record(&row).await.unwrap();
        let a = rec.encrypt("a", "x").unwrap();
        let b = rec.encrypt("b", "y").unwrap();
        stored.push((row, rec.wrapped_key().as_bytes().to_vec(), a, b));
    }
    let s = client.stats();
    assert_eq!(s.data_keys_generated, 5, "{s:?}");
    assert_eq!(s.encrypt_cache_hits, 5, "{s:?}");
    let distinct: std::collections::BTreeSet<_> = stored.iter().map(|r| r.1.clone()).collect();
    assert_eq!(distinct.len(), 5);
    // Reading back: each wrapped key is opened once and serves its two records (4 fields).
    for (row, dek, a, b) in &stored {
        let opened = enc.open(row, dek).await.unwrap();
        assert_eq!(opened.decrypt::<String>("a", a).unwrap(), "x");
        assert_eq!(opened.decrypt::<String>("b", b).unwrap(), "y");
    }
    let s = client.stats();
    assert_eq!(
        (s.data_keys_decrypted, s.decrypt_cache_hits),
        (5, 5),
        "{s:?}"
    );
    // Once a decryption key has used up its fields, the next open calls the service again.
    enc.open(&stored[0].0, &stored[0].1).await.unwrap();
    assert_eq!(client.stats().data_keys_decrypted, 6);

    // Bytes per key: 10 bytes; a 6-byte field per record -> a key serves two records.
    let client = server.client(
        &acme.app,
        CacheLimits {
            max_bytes_per_key: 10,
            ..CacheLimits::default()
        },
    );
    let enc = client.encryptor("acme", "default", ctx.clone());
    for i in 0..6 {
        enc.record(format!("r{i}"))
            .await
            .unwrap()
            .encrypt("f", "123456")
            .unwrap();
    }
    assert_eq!(client.stats().data_keys_generated, 3);

    // Max age.
    let client = server.client(
        &acme.app,
        CacheLimits {
            max_age: Duration::from_millis(300),
            ..CacheLimits::default()
        },
    );
    let enc = client.encryptor("acme", "default", ctx.clone());
    let first = enc.record("a").await.unwrap();
    let second = enc.record("b").await.unwrap();
    assert_eq!(first.wrapped_key(), second.wrapped_key());
    assert_eq!(client.stats().data_keys_generated, 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let third = enc.record("c").await.unwrap();
    assert_ne!(first.wrapped_key(), third.wrapped_key());
    assert_eq!(client.stats().data_keys_generated, 2);
    // The record started before expiry still encrypts (with its own key) and decrypts.
    let late = first.encrypt("f", "late").unwrap();
    let opened = enc.open("a", first.wrapped_key().as_bytes()).await.unwrap();
    assert_eq!(opened.decrypt::<String>("f", &late).unwrap(), "late");

    // Max entries: one. Alternating contexts evicts each time.
    let client = server.client(
        &acme.app,
        CacheLimits {
            max_entries: 1,
            ..CacheLimits::default()
        },
    );
    let a = client.encryptor("acme", "default", context(&[("t", "a")]));
    let b = client.encryptor("acme", "default", context(&[("t", "b")]));
    for _ in 0..3 {
        a.record("r").await.unwrap();
        b.record("r").await.unwrap();
    }
    assert_eq!(client.stats().data_keys_generated, 6);
    a.record("r").await.unwrap();
    a.record("r").await.unwrap();
    assert_eq!(client.stats().data_keys_generated, 7);

    // Disabled: one service call per record, both ways.
    let client = server.client(&acme.app, CacheLimits::disabled());
    let enc = client.encryptor("acme", "default", ctx.clone());
    let rec = enc.record("r").await.unwrap();
    for _ in 0..3 {
        enc.record("r").await.unwrap();
        enc.open("r", rec.wrapped_key().as_bytes()).await.unwrap();
    }
    let s = client.stats();
    assert_eq!(
        (s.data_keys_generated, s.data_keys_decrypted),
        (4, 3),
        "{s:?}"
    );
    assert_eq!((s.encrypt_cache_hits, s.decrypt_cache_hits), (0, 0));

    // Never shared across tenants or contexts, even within one client and one cache.
    let globex = server.tenant("globex").await;
    let client = server.client(&acme.app, CacheLimits::default());
    let e1 = client.encryptor("acme", "default", context(&[("t", "1")]));
    let e2 = client.encryptor("acme", "default", context(&[("t", "2")]));
    let k1 = e1.record("r").await.unwrap();
    let k2 = e2.record("r").await.unwrap();
    assert_ne!(k1.data_key_id(), k2.data_key_id());
    assert_eq!(
        e1.record("r").await.unwrap().data_key_id(),
        k1.data_key_id()
    );
    let e = client
        .encryptor("globex", "default", context(&[("t", "1")]))
        .record("r")
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Forbidden(_)),
        "a cached acme key must not serve globex: {e:?}"
    );
    let globex_client = server.client(&globex.app, CacheLimits::default());
    let g = globex_client
        .encryptor("globex", "default", context(&[("t", "1")]))
        .record("r")
        .await
        .unwrap();
    assert_ne!(g.data_key_id(), k1.data_key_id());

    // clear_cache forgets everything.
    client.clear_cache();
    let before = client.stats().data_keys_generated;
    e1.record("r").await.unwrap();
    assert_eq!(client.stats().data_keys_generated, before + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_wrap_opens_on_the_server() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    // The fingerprint comes from key metadata (an admin reads it and puts it in config).
    let admin = server.client(&acme.admin, CacheLimits::default());
    let meta = admin.get_key("acme", "default").await.unwrap();
    let fingerprint = meta.versions[0].fingerprint.clone();

    let client = server.client(&acme.app, CacheLimits::disabled());
    let pinned = client
        .pinned_public_key("acme", "default", &fingerprint.to_uppercase())
        .await
        .unwrap();
    assert_eq!(pinned.fingerprint().to_string(), fingerprint);
    assert_eq!(pinned.key_ref().version, 1);
    let ctx = context(&[("table", "events")]);
    let enc = client.offline_encryptor(&pinned, ctx.clone());
    let before = client.stats();
    let mut stored = Vec::new();
    for i in 0..5 {
        let rec = enc.record(format!("events/{i}")).await.unwrap();
        let f = rec.encrypt("payload", &format!("event {i}")).unwrap();
        stored.push((rec.wrapped_key().as_bytes().to_vec(), f));
    }
    let after = client.stats();
    assert_eq!(
        after.requests, before.requests,
        "offline wrapping makes no request"
    );
    assert_eq!(after.data_keys_generated, 0);
    assert_eq!(after.data_keys_wrapped_offline, 5);
    assert_eq!(after.public_key_reads, 1);

    // The service opens them (through a service-backed encryptor too: same tenant/key/context).
    for (i, (dek, f)) in stored.iter().enumerate() {
        let opened = enc.open(format!("events/{i}"), dek).await.unwrap();
        assert_eq!(
            opened.decrypt::<String>("payload", f).unwrap(),
            format!("event {i}")
        );
    }
    let online = client.encryptor("acme", "default", ctx.clone());
    online.open("events/0", &stored[0].0).await.unwrap();
    assert_eq!(client.stats().data_keys_decrypted, 6);
    // ... and only under the context they were wrapped for.
    let e = client
        .offline_encryptor(&pinned, context(&[("table", "other")]))
        .open("events/0", &stored[0].0)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DecryptionFailed(_)), "{e:?}");

    // With the cache on, offline keys are reused like service keys.
    let cached = server.client(&acme.app, CacheLimits::default());
    let pinned2 = PinnedPublicKey::from_bytes(
        "acme",
        "default",
        &pinned.public_key().to_bytes(),
        &fingerprint,
    )
    .unwrap();
    let enc = cached.offline_encryptor(&pinned2, ctx.clone());
    for i in 0..10 {
        enc.record(format!("e{i}"))
            .await
            .unwrap()
            .encrypt("f", "x")
            .unwrap();
    }
    let s = cached.stats();
    assert_eq!(
        (
            s.requests,
            s.data_keys_wrapped_offline,
            s.encrypt_cache_hits
        ),
        (0, 1, 9)
    );

    // A wrong pin is refused, whether fetched or given.
    let wrong = "00112233445566778899aabbccddeeff";
    let e = client
        .pinned_public_key("acme", "default", wrong)
        .await
        .unwrap_err();
    match e {
        Error::FingerprintMismatch { expected, actual } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, fingerprint);
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        PinnedPublicKey::from_bytes("acme", "default", &pinned.public_key().to_bytes(), wrong),
        Err(Error::FingerprintMismatch { .. })
    ));
    assert!(matches!(
        PinnedPublicKey::from_bytes("acme", "default", &pinned.public_key().to_bytes(), "xyz"),
        Err(Error::Config(_))
    ));
    // Another tenant's key under a name: its pin does not match this one.
    let globex = server.tenant("globex").await;
    let globex_client = server.client(&globex.app, CacheLimits::default());
    assert!(matches!(
        globex_client
            .pinned_public_key("globex", "default", &fingerprint)
            .await,
        Err(Error::FingerprintMismatch { .. })
    ));
    // A decrypt-only token cannot read public keys.
    let dec = server.client(&acme.decrypt_only, CacheLimits::default());
    assert!(matches!(
        dec.pinned_public_key("acme", "default", &fingerprint).await,
        Err(Error::Forbidden(_))
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_operator_calls_with_typed_errors() {
    let server = Server::start().await;
    let op = &server.operator;
    let created = op.create_tenant("acme").await.unwrap();
    assert_eq!(
        (created.tenant.as_str(), created.default_key.as_str()),
        ("acme", "default")
    );
    assert_eq!(created.id.len(), 32);
    assert!(matches!(
        op.create_tenant("acme").await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        op.create_tenant("Bad Name").await,
        Err(Error::BadRequest(_))
    ));
    // Operators never touch keys.
    assert!(matches!(
        op.list_keys("acme").await,
        Err(Error::Forbidden(_))
    ));

    let admin_token = op
        .create_token(
            "acme",
            &[Role::TenantAdmin],
            Some(Duration::from_millis(3_600_500)),
        )
        .await
        .unwrap();
    assert_eq!(admin_token.roles, vec![Role::TenantAdmin]);
    assert!(admin_token.expires_at.is_some());
    assert!(admin_token.id.starts_with("tok_"));
    assert!(!format!("{admin_token:?}").contains(admin_token.token.expose_secret()));
    let admin = server.client(admin_token.token.expose_secret(), CacheLimits::default());

    let billing = admin.create_key("acme", "billing").await.unwrap();
    assert_eq!(billing.current_version, Some(1));
    assert_eq!(billing.versions.len(), 1);
    assert!(matches!(
        admin.create_key("acme", "billing").await,
        Err(Error::Conflict(_))
    ));
    let keys = admin.list_keys("acme").await.unwrap();
    let names: Vec<_> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"default") && names.contains(&"billing"));
    assert_eq!(admin.get_key("acme", "billing").await.unwrap(), billing);
    let e = admin.get_key("acme", "nope").await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let service = e.service_error().unwrap();
    assert_eq!(service.status, 404);
    assert!(
        service
            .request_id
            .as_deref()
            .is_some_and(|id| id.starts_with("req_"))
    );
    // A name with path syntax is one (percent-encoded) segment, never a route change.
    assert!(matches!(
        admin.get_key("acme", "../../audit").await,
        Err(Error::NotFound(_)) | Err(Error::BadRequest(_))
    ));

    // Tenant admin manages tokens; revocation takes effect at once.
    let app = admin
        .create_token("acme", &[Role::Encrypt], None)
        .await
        .unwrap();
    assert_eq!(app.expires_at, None);
    let app_client = server.client(app.token.expose_secret(), CacheLimits::disabled());
    let enc = app_client.encryptor("acme", "default", context(&[]));
    enc.record("r").await.unwrap();
    // Encrypt-only: cannot decrypt, cannot manage keys.
    let rec = enc.record("r").await.unwrap();
    assert!(matches!(
        enc.open("r", rec.wrapped_key().as_bytes()).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        app_client.list_keys("acme").await,
        Err(Error::Forbidden(_))
    ));
    admin.revoke_token("acme", &app.id).await.unwrap();
    assert!(matches!(enc.record("r").await, Err(Error::Unauthorized(_))));
    assert!(matches!(
        admin.revoke_token("acme", &app.id).await,
        Err(Error::NotFound(_))
    ));

    // An unknown token.
    let nobody = server.client(
        "pqkms_0000000000000000000000000000000000000000000000000000000000000000",
        CacheLimits::default(),
    );
    assert!(matches!(
        nobody.list_keys("acme").await,
        Err(Error::Unauthorized(_))
    ));

    let v = op.audit_verify().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert!(v.entries >= 5);
    assert_eq!(v.head.len(), 64);
    assert!(matches!(
        admin.audit_verify().await,
        Err(Error::Forbidden(_))
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_columns_in_sqlite() {
    use sqlx::Row;
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let client = server.client(&acme.app, CacheLimits::default());
    let customers = client.encryptor("acme", "default", context(&[("table", "customers")]));

    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::query(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, dek BLOB NOT NULL, \
         email BLOB NOT NULL, balance BLOB)",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (id, email, balance) in [
        (1_i64, "ada@example.com", 10_i64),
        (2, "bob@example.com", -5),
    ] {
        let rec = customers.record(format!("customers/{id}")).await.unwrap();
        let email: EncryptedColumn = rec.encrypt("email", email).unwrap();
        let balance = rec.encrypt("balance", &balance).unwrap();
        sqlx::query("INSERT INTO customers (id, dek, email, balance) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(rec.wrapped_key().as_bytes())
            .bind(&email)
            .bind(balance)
            .execute(&pool)
            .await
            .unwrap();
    }
    let rows = sqlx::query("SELECT id, dek, email, balance FROM customers ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut out = Vec::new();
    for row in rows {
        let id: i64 = row.get("id");
        let dek: Vec<u8> = row.get("dek");
        let email: EncryptedColumn = row.get("email");
        let balance: Option<EncryptedColumn> = row.get("balance");
        let opened = customers
            .open(format!("customers/{id}"), &dek)
            .await
            .unwrap();
        out.push((
            id,
            opened.decrypt::<String>("email", &email).unwrap(),
            opened.decrypt::<i64>("balance", balance.unwrap()).unwrap(),
        ));
    }
    assert_eq!(
        out,
        vec![
            (1, "ada@example.com".to_owned(), 10),
            (2, "bob@example.com".to_owned(), -5)
        ]
    );
    let scalar: EncryptedColumn = sqlx::query_scalar("SELECT email FROM customers WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(scalar.data_key_id().is_some());
    server.stop().await;
}

/// PostgreSQL: the same impls (`BYTEA`), checked at compile time (and at run time by
/// `encrypted_columns_in_postgres`).
#[test]
fn encrypted_column_is_a_postgres_bytea() {
    fn is_sqlx_value<DB: sqlx::Database, T>()
    where
        T: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    {
    }
    is_sqlx_value::<sqlx::Postgres, EncryptedColumn>();
    is_sqlx_value::<sqlx::Sqlite, EncryptedColumn>();
    assert_eq!(
        <EncryptedColumn as sqlx::Type<sqlx::Postgres>>::type_info(),
        <Vec<u8> as sqlx::Type<sqlx::Postgres>>::type_info()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_indexes_from_the_service_find_records() {
    use pqkms_client::Normalizer;
    use sqlx::Row;
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;
    // The writer has only `encrypt`, the reader only `decrypt`: they index alike.
    let writer = server.client(&acme.encrypt_only, CacheLimits::default());
    let reader = server.client(&acme.decrypt_only, CacheLimits::default());
    let w = writer
        .blind_index("acme", "default", "email", Normalizer::Email)
        .await
        .unwrap();
    let r = reader
        .blind_index("acme", "default", "email", Normalizer::Email)
        .await
        .unwrap();
    assert_eq!(writer.stats().blind_index_keys, 1);
    let ada = w.compute("ada@example.com");
    assert_eq!(r.compute("ada@example.com"), ada, "same value, same index");
    for equal in [
        " Ada@Example.COM",
        "ADA@EXAMPLE.COM\n",
        "\tada@example.com ",
    ] {
        assert_eq!(
            r.compute(equal),
            ada,
            "{equal:?} normalizes to the same value"
        );
    }
    assert_ne!(w.compute("bob@example.com"), ada);
    // Another field, key or tenant: another index for the same value.
    let raw = writer
        .blind_index("acme", "default", "email", Normalizer::Raw)
        .await
        .unwrap();
    assert_eq!(raw.compute("ada@example.com"), ada, "normalizer only");
    let phone = writer
        .blind_index("acme", "default", "phone", Normalizer::Email)
        .await
        .unwrap();
    assert_ne!(phone.compute("ada@example.com"), ada);
    let admin = server.client(&acme.admin, CacheLimits::default());
    admin.create_key("acme", "billing").await.unwrap();
    let billing = writer
        .blind_index("acme", "billing", "email", Normalizer::Email)
        .await
        .unwrap();
    assert_ne!(billing.compute("ada@example.com"), ada);
    let g = server
        .client(&globex.app, CacheLimits::default())
        .blind_index("globex", "default", "email", Normalizer::Email)
        .await
        .unwrap();
    assert_ne!(g.compute("ada@example.com"), ada);
    // Refused: the admin role, another tenant, an empty field (locally, no request).
    assert!(matches!(
        admin
            .blind_index("acme", "default", "email", Normalizer::Email)
            .await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        writer
            .blind_index("globex", "default", "email", Normalizer::Email)
            .await,
        Err(Error::Forbidden(_))
    ));
    let before = writer.stats().requests;
    assert!(matches!(
        writer
            .blind_index("acme", "default", "", Normalizer::Email)
            .await,
        Err(Error::Config(_))
    ));
    assert_eq!(writer.stats().requests, before);
    // Stable across a rotation.
    admin.rotate_key("acme", "default").await.unwrap();
    let after = reader
        .blind_index("acme", "default", "email", Normalizer::Email)
        .await
        .unwrap();
    assert_eq!(after.compute("ada@example.com"), ada);

    // In a table: look a customer up by email without decrypting the column.
    let customers = writer.encryptor("acme", "default", context(&[("table", "customers")]));
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::query(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, dek BLOB NOT NULL, \
         email BLOB NOT NULL, email_bidx BLOB NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE INDEX customers_email ON customers (email_bidx)")
        .execute(&pool)
        .await
        .unwrap();
    for (id, email) in [(1_i64, "ada@example.com"), (2, "bob@example.com")] {
        let rec = customers.record(format!("customers/{id}")).await.unwrap();
        sqlx::query("INSERT INTO customers (id, dek, email, email_bidx) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(rec.wrapped_key().as_bytes())
            .bind(rec.encrypt("email", email).unwrap())
            .bind(&w.compute(email)[..])
            .execute(&pool)
            .await
            .unwrap();
    }
    let found = sqlx::query("SELECT id, dek, email FROM customers WHERE email_bidx = ?")
        .bind(&r.compute("  ADA@example.com ")[..])
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let id: i64 = found[0].get("id");
    assert_eq!(id, 1);
    let dek: Vec<u8> = found[0].get("dek");
    let opened = server
        .client(&acme.decrypt_only, CacheLimits::default())
        .encryptor("acme", "default", context(&[("table", "customers")]))
        .open("customers/1", &dek)
        .await
        .unwrap();
    let email: String = opened
        .decrypt("email", found[0].get::<EncryptedColumn, _>("email"))
        .unwrap();
    assert_eq!(email, "ada@example.com");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_calls_with_typed_answers_and_errors() {
    use pqkms_client::{KeyConfig, MAX_REWRAP_BATCH, RotationPeriod};
    let server = Server::start_with(|c| {
        c.min_destroy_waiting_secs = 0;
        c.lifecycle_interval_ms = 3_600_000;
    })
    .await;
    let acme = server.tenant("acme").await;
    let admin = server.client(&acme.admin, CacheLimits::default());
    let app = server.client(&acme.app, CacheLimits::disabled());
    let ctx = context(&[("table", "customers")]);
    let enc = app.encryptor("acme", "default", ctx.clone());

    // Three records on version 1.
    let mut stored = Vec::new();
    for i in 0..3 {
        let rec = enc.record(format!("r{i}")).await.unwrap();
        let field = rec.encrypt("f", &format!("value {i}")).unwrap();
        stored.push((rec.wrapped_key().clone(), field));
    }
    let meta = admin.get_key("acme", "default").await.unwrap();
    assert_eq!(
        (meta.current_version, meta.min_decryption_version),
        (Some(1), 1)
    );

    // Rotate: version 2, current; its fingerprint is what the metadata shows.
    let rotated = admin.rotate_key("acme", "default").await.unwrap();
    assert_eq!(rotated.version, 2);
    let meta = admin.get_key("acme", "default").await.unwrap();
    assert_eq!(meta.current_version, Some(2));
    assert_eq!(meta.versions[1].fingerprint, rotated.fingerprint);
    assert!(matches!(
        app.rotate_key("acme", "default").await,
        Err(Error::Forbidden(_))
    ));

    // Re-wrap one, then the rest in a batch with a bad item in the middle.
    let one = app
        .rewrap("acme", "default", stored[0].0.as_bytes(), &ctx)
        .await
        .unwrap();
    assert_eq!((one.from_version, one.version), (1, 2));
    assert_eq!(one.wrapped.key_ref().version, 2);
    assert_ne!(one.wrapped, stored[0].0);
    let other_ctx = context(&[("table", "orders")]);
    let items: Vec<(&[u8], &pqkms_client::EncryptionContext)> = vec![
        (stored[1].0.as_bytes(), &ctx),
        (stored[2].0.as_bytes(), &other_ctx),
        (b"not a wrapped key", &ctx),
        (stored[2].0.as_bytes(), &ctx),
    ];
    let results = app.rewrap_batch("acme", "default", &items).await.unwrap();
    assert_eq!(results.len(), 4);
    assert!(matches!(&results[0], Ok(r) if r.from_version == 1 && r.version == 2));
    match &results[1] {
        Err(e @ Error::DecryptionFailed(s)) => {
            assert_eq!(s.status, 422);
            assert!(
                s.request_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("req_"))
            );
            assert_eq!(e.code(), Some("decryption_failed"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&results[2], Err(Error::DecryptionFailed(_))));
    assert!(results[3].is_ok());
    let empty = app.rewrap_batch("acme", "default", &[]).await.unwrap();
    assert!(empty.is_empty());
    // Over the service's item limit: refused locally, no request.
    let too_many = vec![(stored[0].0.as_bytes(), &ctx); MAX_REWRAP_BATCH + 1];
    let requests = app.stats().requests;
    assert!(matches!(
        app.rewrap_batch("acme", "default", &too_many).await,
        Err(Error::Config(_))
    ));
    assert_eq!(app.stats().requests, requests);
    // Only the decrypt role re-wraps.
    assert!(matches!(
        admin
            .rewrap("acme", "default", stored[0].0.as_bytes(), &ctx)
            .await,
        Err(Error::Forbidden(_))
    ));
    // The moved records decrypt with their new wrapped keys; the data did not change.
    let moved = [
        one.wrapped.clone(),
        results[0].as_ref().unwrap().wrapped.clone(),
        results[3].as_ref().unwrap().wrapped.clone(),
    ];
    for (i, wrapped) in moved.iter().enumerate() {
        let opened = enc.open(format!("r{i}"), wrapped.as_bytes()).await.unwrap();
        assert_eq!(
            opened.decrypt::<String>("f", &stored[i].1).unwrap(),
            format!("value {i}")
        );
    }

    // Retire version 1: the old wrapped keys are refused as retired, and still re-wrap.
    let policy = admin
        .configure_key(
            "acme",
            "default",
            &KeyConfig {
                min_decryption_version: Some(2),
                rotation_period: Some(RotationPeriod::Every(Duration::from_secs(90 * 86_400))),
            },
        )
        .await
        .unwrap();
    assert_eq!(policy.key, "default");
    assert_eq!(policy.min_decryption_version, 2);
    assert_eq!(policy.rotation_period_secs, Some(90 * 86_400));
    assert!(policy.next_rotation_at.is_some());
    let e = enc.open("r0", stored[0].0.as_bytes()).await.unwrap_err();
    assert!(matches!(e, Error::VersionRetired(_)), "{e:?}");
    assert!(
        app.rewrap("acme", "default", stored[0].0.as_bytes(), &ctx)
            .await
            .is_ok()
    );
    let read = admin
        .configure_key("acme", "default", &KeyConfig::default())
        .await
        .unwrap();
    assert_eq!(read, policy, "an empty config changes nothing");
    let meta = admin.get_key("acme", "default").await.unwrap();
    assert_eq!(
        (meta.min_decryption_version, meta.rotation_period_secs),
        (2, Some(90 * 86_400))
    );
    let off = admin
        .configure_key(
            "acme",
            "default",
            &KeyConfig {
                min_decryption_version: Some(1),
                rotation_period: Some(RotationPeriod::Off),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (off.rotation_period_secs, off.next_rotation_at),
        (None, None)
    );
    for bad in [
        KeyConfig {
            min_decryption_version: Some(3),
            ..KeyConfig::default()
        },
        KeyConfig {
            rotation_period: Some(RotationPeriod::Every(Duration::from_secs(30))),
            ..KeyConfig::default()
        },
    ] {
        assert!(matches!(
            admin.configure_key("acme", "default", &bad).await,
            Err(Error::BadRequest(_))
        ));
    }

    // Disable / enable one version.
    let changed = admin.disable_key("acme", "default", Some(1)).await.unwrap();
    assert_eq!(
        (changed.version, changed.state.as_str()),
        (Some(1), "disabled")
    );
    let e = enc.open("r0", stored[0].0.as_bytes()).await.unwrap_err();
    assert!(matches!(e, Error::KeyDisabled(_)), "{e:?}");
    assert!(matches!(
        admin.disable_key("acme", "default", Some(1)).await,
        Err(Error::InvalidState(_))
    ));
    let changed = admin.enable_key("acme", "default", Some(1)).await.unwrap();
    assert_eq!(changed.state, "enabled");
    enc.open("r0", stored[0].0.as_bytes()).await.unwrap();
    // The whole key: no data keys at all while disabled.
    let all = admin.disable_key("acme", "default", None).await.unwrap();
    assert_eq!(all.version, None);
    assert!(matches!(enc.record("x").await, Err(Error::KeyDisabled(_))));
    admin.enable_key("acme", "default", None).await.unwrap();

    // Destruction: scheduled, visible in the metadata, cancelled, then carried out.
    let scheduled = admin
        .destroy_key("acme", "default", Some(1), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(scheduled.version, Some(1));
    let meta = admin.get_key("acme", "default").await.unwrap();
    assert_eq!(meta.versions[0].state, "pending_destruction");
    assert_eq!(meta.versions[0].destroy_at, Some(scheduled.destroy_at));
    let e = enc.open("r0", stored[0].0.as_bytes()).await.unwrap_err();
    assert!(matches!(e, Error::KeyDisabled(_)), "{e:?}");
    let cancelled = admin
        .cancel_destroy_key("acme", "default", Some(1))
        .await
        .unwrap();
    assert!(cancelled.cancelled);
    assert!(matches!(
        admin.cancel_destroy_key("acme", "default", Some(1)).await,
        Err(Error::InvalidState(_))
    ));
    admin
        .destroy_key("acme", "default", Some(1), Some(Duration::ZERO))
        .await
        .unwrap();
    server.tick().await;
    let meta = admin.get_key("acme", "default").await.unwrap();
    assert_eq!(meta.versions[0].state, "destroyed");
    assert!(meta.versions[0].destroyed_at.is_some());
    let e = app
        .rewrap("acme", "default", stored[0].0.as_bytes(), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::KeyDestroyed(_)), "{e:?}");
    // What was moved to version 2 in time is unaffected.
    let opened = enc.open("r1", moved[1].as_bytes()).await.unwrap();
    assert_eq!(
        opened.decrypt::<String>("f", &stored[1].1).unwrap(),
        "value 1"
    );

    // Root-key re-seal is the operator's (nothing to do: one root key).
    let reseal = server.operator.reseal_root().await.unwrap();
    assert_eq!((reseal.resealed, reseal.remaining), (0, 0));
    assert!(matches!(
        admin.reseal_root().await,
        Err(Error::Forbidden(_))
    ));
    server.stop().await;
}

/// Issue 5: "a destroyed key surfaces as its own error" — against the real service, through the
/// encryptor (decrypt and encrypt) and the low-level calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_key_is_key_destroyed() {
    let server = Server::start_with(|c| {
        c.min_destroy_waiting_secs = 0;
        c.lifecycle_interval_ms = 3_600_000;
    })
    .await;
    let acme = server.tenant("acme").await;
    let admin = server.client(&acme.admin, CacheLimits::default());
    let ctx = context(&[("table", "customers")]);
    let cached = server.client(&acme.app, CacheLimits::default());
    let enc = cached.encryptor("acme", "default", ctx.clone());
    let rec = enc.record("customers/1").await.unwrap();
    let email = rec.encrypt("email", "ada@example.com").unwrap();
    let dek = rec.wrapped_key().as_bytes().to_vec();
    enc.open("customers/1", &dek).await.unwrap();

    // The waiting period is the shortest this service allows (0 s here): due at once.
    let scheduled = admin
        .destroy_key("acme", "default", None, Some(Duration::ZERO))
        .await
        .unwrap();
    server.tick().await;

    let fresh = server.client(&acme.app, CacheLimits::disabled());
    let fresh_enc = fresh.encryptor("acme", "default", ctx.clone());
    let e = fresh_enc.open("customers/1", &dek).await.unwrap_err();
    let Error::KeyDestroyed(details) = &e else {
        panic!("expected KeyDestroyed, got {e:?}");
    };
    assert_eq!(
        (details.status, details.code.as_str()),
        (410, "key_destroyed")
    );
    let at = details.destroyed_at.expect("destroyed_at");
    assert!(
        at >= scheduled.destroy_at,
        "{at} vs {}",
        scheduled.destroy_at
    );
    assert!(e.to_string().contains("key_destroyed"), "{e}");
    // New records and the low-level calls: the same error.
    assert!(matches!(
        fresh_enc.record("customers/2").await,
        Err(Error::KeyDestroyed(_))
    ));
    assert!(matches!(
        fresh.decrypt_data_key("acme", "default", &dek, &ctx).await,
        Err(Error::KeyDestroyed(_))
    ));
    assert!(matches!(
        fresh.public_key("acme", "default").await,
        Err(Error::KeyDestroyed(_))
    ));
    assert!(matches!(
        fresh
            .blind_index("acme", "default", "email", pqkms_client::Normalizer::Email)
            .await,
        Err(Error::KeyDestroyed(_))
    ));
    // As documented: a key already in a client's cache keeps decrypting until it leaves the
    // cache (max_age, or clear_cache); then the service's answer applies.
    let opened = enc.open("customers/1", &dek).await.unwrap();
    assert_eq!(
        opened.decrypt::<String>("email", &email).unwrap(),
        "ada@example.com"
    );
    cached.clear_cache();
    assert!(matches!(
        enc.open("customers/1", &dek).await,
        Err(Error::KeyDestroyed(_))
    ));
    server.stop().await;
}

/// `EncryptedColumn` in a real PostgreSQL `BYTEA` column, through sqlx. Needs
/// `PQKMS_TEST_POSTGRES_URL` (CI sets it; then an unreachable server fails the test); without it
/// the test says so on stderr and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_columns_in_postgres() {
    use sqlx::Row;
    let Ok(url) = std::env::var("PQKMS_TEST_POSTGRES_URL") else {
        eprintln!(
            "WARNING: PQKMS_TEST_POSTGRES_URL is not set: PostgreSQL EncryptedColumn test skipped \
             (CI sets it)"
        );
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at PQKMS_TEST_POSTGRES_URL is unreachable: {e}"));
    let mut id = [0u8; 6];
    getrandom::fill(&mut id).unwrap();
    let table = format!(
        "pqkms_client_test_{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    // Only the table name is generated; every value below is bound.
    let sql = |s: String| sqlx::AssertSqlSafe(s);
    sqlx::query(sql(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, dek BYTEA NOT NULL, \
         email BYTEA NOT NULL, balance BYTEA)"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let client = server.client(&acme.app, CacheLimits::default());
    let (db, name) = (pool.clone(), table.clone());
    let result = async move {
        let (pool, table) = (db, name);
        let customers = client.encryptor("acme", "default", context(&[("table", "customers")]));
        let sql = |s: String| sqlx::AssertSqlSafe(s);
        for (id, email, balance) in [
            (1_i64, "ada@example.com", Some(10_i64)),
            (2, "bob@example.com", None),
        ] {
            let rec = customers.record(format!("customers/{id}")).await.unwrap();
            let email: EncryptedColumn = rec.encrypt("email", email).unwrap();
            let balance: Option<EncryptedColumn> =
                balance.map(|b| rec.encrypt("balance", &b).unwrap());
            sqlx::query(sql(format!(
                "INSERT INTO {table} (id, dek, email, balance) VALUES ($1, $2, $3, $4)"
            )))
            .bind(id)
            .bind(rec.wrapped_key().as_bytes())
            .bind(&email)
            .bind(balance)
            .execute(&pool)
            .await
            .unwrap();
        }
        let rows = sqlx::query(sql(format!(
            "SELECT id, dek, email, balance, octet_length(email) AS n FROM {table} ORDER BY id"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut out = Vec::new();
        for row in rows {
            let id: i64 = row.get("id");
            let dek: Vec<u8> = row.get("dek");
            let email: EncryptedColumn = row.get("email");
            let n: i32 = row.get("n");
            assert_eq!(usize::try_from(n).unwrap(), email.as_bytes().len());
            let balance: Option<EncryptedColumn> = row.get("balance");
            let opened = customers
                .open(format!("customers/{id}"), &dek)
                .await
                .unwrap();
            out.push((
                id,
                opened.decrypt::<String>("email", &email).unwrap(),
                balance.map(|b| opened.decrypt::<i64>("balance", b).unwrap()),
            ));
        }
        assert_eq!(
            out,
            vec![
                (1, "ada@example.com".to_owned(), Some(10)),
                (2, "bob@example.com".to_owned(), None)
            ]
        );
        let scalar: EncryptedColumn =
            sqlx::query_scalar(sql(format!("SELECT email FROM {table} WHERE id = $1")))
                .bind(1_i64)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(scalar.data_key_id().is_some());
    };
    // Drop the table whatever happened, then report.
    let outcome = tokio::spawn(result).await;
    sqlx::query(sql(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    server.stop().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The decrypt cache is keyed on the wrapped key's tag; a blob that shares the tag but differs
/// elsewhere must still go to the service (and be refused), never hit the cached key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_wrapped_key_never_hits_the_decrypt_cache() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let client = server.client(&acme.app, CacheLimits::default());
    let enc = client.encryptor("acme", "default", context(&[("t", "x")]));
    let rec = enc.record("r").await.unwrap();
    let dek = rec.wrapped_key().as_bytes().to_vec();
    enc.open("r", &dek).await.unwrap();
    enc.open("r", &dek).await.unwrap();
    let s = client.stats();
    assert_eq!((s.data_keys_decrypted, s.decrypt_cache_hits), (1, 1));
    for i in [0, 10, 60, 500, dek.len() - 17] {
        let mut bad = dek.clone();
        bad[i] ^= 0x80;
        let e = enc.open("r", &bad).await.unwrap_err();
        assert!(matches!(e, Error::DecryptionFailed(_)), "byte {i}: {e:?}");
    }
    let s = client.stats();
    assert_eq!((s.data_keys_decrypted, s.decrypt_cache_hits), (6, 1));
    // The genuine key still hits.
    enc.open("r", &dek).await.unwrap();
    assert_eq!(client.stats().decrypt_cache_hits, 2);
    server.stop().await;
}
