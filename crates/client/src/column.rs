//! [`EncryptedColumn`]: one field ciphertext, storable as bytes.

use core::fmt;

use pqkms_envelope::DataKeyId;

/// One encrypted field: the compact field ciphertext of `pqkms-envelope` (`"PF" | 0x01 | data key
/// id | nonce | ciphertext | tag`, 39 bytes of overhead). Not secret; store it as bytes.
///
/// With the `sqlx` feature (on by default) it binds and decodes as bytes in every sqlx database
/// whose `Vec<u8>` does — `BLOB` in SQLite, `BYTEA` in PostgreSQL:
///
/// ```no_run
/// # use pqkms_client::{EncryptedColumn, RecordEncryptor};
/// # async fn store(pool: sqlx::SqlitePool, record: RecordEncryptor) -> Result<(), Box<dyn std::error::Error>> {
/// let email: EncryptedColumn = record.encrypt("email", "ada@example.com")?;
/// sqlx::query("INSERT INTO customers (id, dek, email) VALUES (?, ?, ?)")
///     .bind(42_i64)
///     .bind(record.wrapped_key().as_bytes())
///     .bind(&email)
///     .execute(&pool)
///     .await?;
/// let email: EncryptedColumn = sqlx::query_scalar("SELECT email FROM customers WHERE id = 42")
///     .fetch_one(&pool)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EncryptedColumn(Vec<u8>);

impl EncryptedColumn {
    /// Wrap stored bytes. Nothing is checked until decryption.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        EncryptedColumn(bytes.into())
    }

    /// The ciphertext bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The ciphertext bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Which data key encrypted it (structure check only), to find the right wrapped key when a
    /// row holds several.
    pub fn data_key_id(&self) -> Option<DataKeyId> {
        DataKeyId::of_field(&self.0).ok()
    }
}

impl From<Vec<u8>> for EncryptedColumn {
    fn from(bytes: Vec<u8>) -> Self {
        EncryptedColumn(bytes)
    }
}

impl From<EncryptedColumn> for Vec<u8> {
    fn from(c: EncryptedColumn) -> Self {
        c.0
    }
}

impl AsRef<[u8]> for EncryptedColumn {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for EncryptedColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptedColumn({} bytes", self.0.len())?;
        if let Some(id) = self.data_key_id() {
            write!(f, ", data key {id}")?;
        }
        f.write_str(")")
    }
}

#[cfg(feature = "sqlx")]
mod sqlx_impls {
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::{Database, Decode, Encode, Type};

    use super::EncryptedColumn;

    impl<DB: Database> Type<DB> for EncryptedColumn
    where
        Vec<u8>: Type<DB>,
    {
        fn type_info() -> DB::TypeInfo {
            <Vec<u8> as Type<DB>>::type_info()
        }

        fn compatible(ty: &DB::TypeInfo) -> bool {
            <Vec<u8> as Type<DB>>::compatible(ty)
        }
    }

    impl<'q, DB: Database> Encode<'q, DB> for EncryptedColumn
    where
        Vec<u8>: Encode<'q, DB>,
    {
        fn encode(self, buf: &mut DB::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
            <Vec<u8> as Encode<'q, DB>>::encode(self.0, buf)
        }

        fn encode_by_ref(&self, buf: &mut DB::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
            <Vec<u8> as Encode<'q, DB>>::encode_by_ref(&self.0, buf)
        }

        fn size_hint(&self) -> usize {
            <Vec<u8> as Encode<'q, DB>>::size_hint(&self.0)
        }
    }

    impl<'r, DB: Database> Decode<'r, DB> for EncryptedColumn
    where
        Vec<u8>: Decode<'r, DB>,
    {
        fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
            <Vec<u8> as Decode<'r, DB>>::decode(value).map(EncryptedColumn)
        }
    }
}
