//! Field encryption: [`Encryptor`], [`RecordEncryptor`], [`RecordDecryptor`], [`EncryptedRecord`].
//!
//! ## Associated data
//!
//! Every field is authenticated together with the **row** (a caller-chosen identifier of the
//! record, such as `b"customers/42"`) and the **field name** (such as `"email"`). The AAD of a
//! field is
//!
//! ```text
//! "pqkms-client/v1/field" || u64be(len row) || row || u64be(len field) || field
//! ```
//!
//! so a ciphertext copied to another row or another column fails to decrypt, and so does a wrapped
//! key moved to another tenant, key or context (that check is the service's). Choose a row
//! identifier that never changes for the life of the record (its primary key, not a position) and
//! that you know before reading the record. Callers with their own scheme use
//! [`RecordEncryptor::encrypt_with_aad`] and [`RecordDecryptor::decrypt_with_aad`].

use std::collections::BTreeMap;
use std::sync::Arc;

use pqkms_envelope::{
    ContextDigest, DataKeyId, EncryptionContext, FieldKey, TenantPublicKey, WrappedDataKey,
};
use zeroize::Zeroizing;

use crate::cache::{CachedKey, DecryptKey, EncryptKey, Source, wrapped_tag};
use crate::client::{Client, bump};
use crate::column::EncryptedColumn;
use crate::error::{Error, Result};
use crate::value::{DecryptValue, EncryptValue};

const AAD_LABEL: &[u8] = b"pqkms-client/v1/field";

fn aad_prefix(row: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_LABEL.len() + 8 + row.len());
    out.extend_from_slice(AAD_LABEL);
    out.extend_from_slice(&(row.len() as u64).to_be_bytes());
    out.extend_from_slice(row);
    out
}

fn field_aad(prefix: &[u8], field: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8 + field.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field.as_bytes());
    out
}

/// Encrypts and decrypts the fields of records of one tenant, under one key and one encryption
/// context. Cheap to clone. Make one with [`Client::encryptor`] (data keys from the service) or
/// [`Client::offline_encryptor`] (data keys wrapped locally to a pinned public key).
///
/// Each record gets one data key ([`Encryptor::record`]) — a cached one while the
/// [`CacheLimits`](crate::CacheLimits) allow, else a fresh one — and stores its wrapped form once,
/// however many fields it has. Reading a record ([`Encryptor::open`]) unwraps that key through
/// the service (which checks the tenant, key, context and the caller's `decrypt` role, and audits
/// the use) unless the same wrapped key was opened for this tenant, key and context recently.
///
/// The context is bound into every wrapped key and must be the same to decrypt: put in it what
/// identifies *where* the data lives at a coarse grain (`{"table": "customers"}`), and the row
/// and field in the associated data (see the module docs). A context per row works but defeats
/// the cache: each row then needs its own data key.
#[derive(Clone)]
pub struct Encryptor {
    client: Client,
    tenant: Arc<str>,
    key: Arc<str>,
    context: Arc<EncryptionContext>,
    digest: ContextDigest,
    offline: Option<Arc<TenantPublicKey>>,
}

impl core::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Encryptor")
            .field("tenant", &self.tenant)
            .field("key", &self.key)
            .field("context", &self.context)
            .field("offline", &self.offline.as_ref().map(|k| k.fingerprint()))
            .finish()
    }
}

impl Client {
    /// An encryptor for `tenant`'s key `key` under `context`, getting data keys from the service
    /// (token role `encrypt`; `decrypt` to read records back).
    pub fn encryptor(&self, tenant: &str, key: &str, context: EncryptionContext) -> Encryptor {
        Encryptor::new(self.clone(), tenant, key, context, None)
    }
}

impl Encryptor {
    pub(crate) fn new(
        client: Client,
        tenant: &str,
        key: &str,
        context: EncryptionContext,
        offline: Option<Arc<TenantPublicKey>>,
    ) -> Self {
        Encryptor {
            client,
            tenant: tenant.into(),
            key: key.into(),
            digest: context.digest(),
            context: Arc::new(context),
            offline,
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The key name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The encryption context.
    pub fn context(&self) -> &EncryptionContext {
        &self.context
    }

    /// Start encrypting the record identified by `row` (see the module docs on associated data):
    /// obtains a data key — from the cache, or one service call (or, offline, one local wrap).
    pub async fn record(&self, row: impl AsRef<[u8]>) -> Result<RecordEncryptor> {
        let counters = &self.client.inner.counters;
        let cache = &self.client.inner.cache;
        let cache_key = EncryptKey {
            source: match &self.offline {
                Some(pk) => Source::Offline(pk.fingerprint()),
                None => Source::Service,
            },
            tenant: self.tenant.to_string(),
            key: self.key.to_string(),
            context: self.digest,
        };
        let key = match cache.get_encrypt(&cache_key) {
            Some(hit) => {
                bump(&counters.encrypt_cache_hits);
                hit
            }
            None => {
                let (data_key, wrapped) = match &self.offline {
                    Some(pk) => {
                        bump(&counters.data_keys_wrapped_offline);
                        pk.generate_data_key(&self.context)?
                    }
                    None => {
                        let generated = self
                            .client
                            .generate_data_key(&self.tenant, &self.key, &self.context, true)
                            .await?;
                        let data_key = generated.plaintext.ok_or_else(|| {
                            Error::InvalidResponse("no plaintext data key".into())
                        })?;
                        (data_key, generated.wrapped)
                    }
                };
                let fresh = CachedKey::new(FieldKey::new(&data_key)?, wrapped);
                cache.put_encrypt(cache_key, &fresh);
                fresh
            }
        };
        Ok(RecordEncryptor {
            key,
            aad_prefix: aad_prefix(row.as_ref()),
            fields: BTreeMap::new(),
        })
    }

    /// Start decrypting the record identified by `row` whose stored wrapped data key is
    /// `wrapped_key`: one service call (`decrypt` role), or none if this client opened the same
    /// wrapped key for this tenant, key and context within the cache limits.
    ///
    /// A wrapped key of another tenant, key or context fails with
    /// [`Error::DecryptionFailed`].
    pub async fn open(&self, row: impl AsRef<[u8]>, wrapped_key: &[u8]) -> Result<RecordDecryptor> {
        let counters = &self.client.inner.counters;
        let cache = &self.client.inner.cache;
        let cache_key = DecryptKey {
            tenant: Arc::clone(&self.tenant),
            key: Arc::clone(&self.key),
            context: self.digest,
            tag: wrapped_tag(wrapped_key),
        };
        let key = match cache.get_decrypt(&cache_key, wrapped_key) {
            Some(hit) => {
                bump(&counters.decrypt_cache_hits);
                hit
            }
            None => {
                let data_key = self
                    .client
                    .decrypt_data_key(&self.tenant, &self.key, wrapped_key, &self.context)
                    .await?;
                let wrapped = WrappedDataKey::parse(wrapped_key)
                    .map_err(|e| Error::InvalidResponse(format!("opened an invalid blob: {e}")))?;
                let fresh = CachedKey::new(FieldKey::new(&data_key)?, wrapped);
                cache.put_decrypt(cache_key, &fresh);
                fresh
            }
        };
        Ok(RecordDecryptor {
            key,
            aad_prefix: aad_prefix(row.as_ref()),
        })
    }

    /// [`Encryptor::open`] with the wrapped key of `record`.
    pub async fn open_record(
        &self,
        row: impl AsRef<[u8]>,
        record: &EncryptedRecord,
    ) -> Result<RecordDecryptor> {
        self.open(row, &record.wrapped_key).await
    }
}

/// Encrypts the fields of one record under one data key. Synchronous and cheap per field (one
/// AES-256-GCM call); no I/O.
pub struct RecordEncryptor {
    key: Arc<CachedKey>,
    aad_prefix: Vec<u8>,
    fields: BTreeMap<String, EncryptedColumn>,
}

impl core::fmt::Debug for RecordEncryptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordEncryptor")
            .field("data_key_id", &self.key.field_key.id())
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RecordEncryptor {
    /// The wrapped data key: store it once with the record (a `BLOB`/`BYTEA` column, 1254 bytes).
    pub fn wrapped_key(&self) -> &WrappedDataKey {
        &self.key.wrapped
    }

    /// The id every field of this record carries.
    pub fn data_key_id(&self) -> DataKeyId {
        self.key.field_key.id()
    }

    /// Encrypt `value` as field `field` of this record and return its ciphertext.
    pub fn encrypt<T: EncryptValue + ?Sized>(
        &self,
        field: &str,
        value: &T,
    ) -> Result<EncryptedColumn> {
        let plaintext = value.to_plaintext()?;
        self.encrypt_with_aad(&plaintext, &field_aad(&self.aad_prefix, field))
    }

    /// Encrypt `value` as field `field` and keep it for [`RecordEncryptor::finish`].
    pub fn add<T: EncryptValue + ?Sized>(&mut self, field: &str, value: &T) -> Result<&mut Self> {
        let column = self.encrypt(field, value)?;
        self.fields.insert(field.to_owned(), column);
        Ok(self)
    }

    /// Encrypt raw bytes with caller-chosen associated data (no row or field binding of ours).
    pub fn encrypt_with_aad(
        &self,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<EncryptedColumn> {
        self.key.count(plaintext.len());
        Ok(EncryptedColumn::from(
            self.key.field_key.encrypt(plaintext, associated_data)?,
        ))
    }

    /// The record: its wrapped key and the fields [`add`](RecordEncryptor::add)ed.
    pub fn finish(self) -> EncryptedRecord {
        EncryptedRecord {
            wrapped_key: self.key.wrapped.as_bytes().to_vec(),
            fields: self.fields,
        }
    }
}

/// Decrypts the fields of one record. Synchronous and cheap per field; no I/O.
pub struct RecordDecryptor {
    key: Arc<CachedKey>,
    aad_prefix: Vec<u8>,
}

impl core::fmt::Debug for RecordDecryptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordDecryptor")
            .field("data_key_id", &self.key.field_key.id())
            .finish()
    }
}

impl RecordDecryptor {
    /// Decrypt field `field` of this record as a `T`. A tampered ciphertext, one from another
    /// row, field or data key fails with `Error::Crypto(pqkms_envelope::Error::Decryption)`.
    pub fn decrypt<T: DecryptValue>(&self, field: &str, column: impl AsRef<[u8]>) -> Result<T> {
        let plaintext =
            self.decrypt_with_aad(column.as_ref(), &field_aad(&self.aad_prefix, field))?;
        T::from_plaintext(plaintext)
    }

    /// Decrypt field `field` of `record`; `Ok(None)` if the record has no such field.
    pub fn field<T: DecryptValue>(
        &self,
        record: &EncryptedRecord,
        field: &str,
    ) -> Result<Option<T>> {
        record
            .fields
            .get(field)
            .map(|c| self.decrypt(field, c))
            .transpose()
    }

    /// Decrypt raw bytes encrypted with [`RecordEncryptor::encrypt_with_aad`].
    pub fn decrypt_with_aad(
        &self,
        ciphertext: &[u8],
        associated_data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let plaintext = Zeroizing::new(self.key.field_key.decrypt(ciphertext, associated_data)?);
        self.key.count(plaintext.len());
        Ok(plaintext)
    }
}

/// One encrypted record: its wrapped data key (stored once) and its field ciphertexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedRecord {
    wrapped_key: Vec<u8>,
    fields: BTreeMap<String, EncryptedColumn>,
}

impl EncryptedRecord {
    /// Reassemble a record read from storage.
    pub fn new(wrapped_key: Vec<u8>, fields: BTreeMap<String, EncryptedColumn>) -> Self {
        EncryptedRecord {
            wrapped_key,
            fields,
        }
    }

    /// The wrapped data key bytes.
    pub fn wrapped_key(&self) -> &[u8] {
        &self.wrapped_key
    }

    /// One field's ciphertext.
    pub fn field(&self, name: &str) -> Option<&EncryptedColumn> {
        self.fields.get(name)
    }

    /// All fields, by name.
    pub fn fields(&self) -> &BTreeMap<String, EncryptedColumn> {
        &self.fields
    }

    /// Take the parts.
    pub fn into_parts(self) -> (Vec<u8>, BTreeMap<String, EncryptedColumn>) {
        (self.wrapped_key, self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_is_unambiguous() {
        // ("ab", "c") and ("a", "bc") must differ.
        assert_ne!(
            field_aad(&aad_prefix(b"ab"), "c"),
            field_aad(&aad_prefix(b"a"), "bc")
        );
    }
}
