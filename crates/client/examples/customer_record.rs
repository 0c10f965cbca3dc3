//! Encrypt a customer record into an SQLite table and read it back.
//!
//! ```sh
//! pqkms serve &                                    # listens on 127.0.0.1:8650
//! export PQKMS_TOKEN=...                           # a token with roles encrypt + decrypt
//! cargo run -p pqkms-client --example customer_record -- acme
//! ```

use pqkms_client::{Client, EncryptedColumn, EncryptionContext, Json};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Serialize, Deserialize)]
struct Address {
    street: String,
    city: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tenant = std::env::args().nth(1).unwrap_or_else(|| "acme".into());
    let addr = std::env::var("PQKMS_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8650".into());
    let client = Client::new(&addr, std::env::var("PQKMS_TOKEN")?)?;
    let customers = client.encryptor(
        &tenant,
        "default",
        EncryptionContext::from_iter([("table", "customers")]),
    );

    let db = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    sqlx::query(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, dek BLOB NOT NULL, \
         email BLOB NOT NULL, balance BLOB NOT NULL, address BLOB NOT NULL)",
    )
    .execute(&db)
    .await?;

    // Write: one data key per record (cached across records within the limits).
    let id = 42_i64;
    let row = format!("customers/{id}");
    let record = customers.record(&row).await?;
    sqlx::query("INSERT INTO customers (id, dek, email, balance, address) VALUES (?, ?, ?, ?, ?)")
        .bind(id)
        .bind(record.wrapped_key().as_bytes())
        .bind(record.encrypt("email", "ada@example.com")?)
        .bind(record.encrypt("balance", &1_250_i64)?)
        .bind(record.encrypt(
            "address",
            &Json(Address {
                street: "1 Analytical Way".into(),
                city: "London".into(),
            }),
        )?)
        .execute(&db)
        .await?;

    // Read: the service unwraps the data key, fields decrypt locally.
    let stored = sqlx::query("SELECT dek, email, balance, address FROM customers WHERE id = ?")
        .bind(id)
        .fetch_one(&db)
        .await?;
    let dek: Vec<u8> = stored.get("dek");
    let opened = customers.open(&row, &dek).await?;
    let email: String = opened.decrypt("email", stored.get::<EncryptedColumn, _>("email"))?;
    let balance: i64 = opened.decrypt("balance", stored.get::<EncryptedColumn, _>("balance"))?;
    let address: Json<Address> =
        opened.decrypt("address", stored.get::<EncryptedColumn, _>("address"))?;
    println!("customer {id}: {email}, balance {balance}, {:?}", address.0);
    println!("service calls: {:?}", client.stats());
    Ok(())
}
