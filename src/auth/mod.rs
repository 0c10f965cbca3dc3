//! Authentication (bearer tokens, stored as SHA-256 hashes) and authorization (roles and tenant
//! scope, deny by default).

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::store::TokenRow;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Platform operator: create tenants and tokens for any tenant, read all audit. No data keys.
    Operator,
    /// Administers one tenant: keys, tokens, audit.
    TenantAdmin,
    /// May generate data keys and read public keys of its tenant.
    Encrypt,
    /// May decrypt data keys of its tenant.
    Decrypt,
}

impl Role {
    /// Parse the wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "tenant-admin" => Some(Role::TenantAdmin),
            "encrypt" => Some(Role::Encrypt),
            "decrypt" => Some(Role::Decrypt),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::TenantAdmin => "tenant-admin",
            Role::Encrypt => "encrypt",
            Role::Decrypt => "decrypt",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id: what the audit log records.
    pub token_id: String,
    /// Name of the token's tenant; `None` for operator tokens.
    pub tenant: Option<String>,
    /// Granted roles.
    pub roles: Vec<Role>,
}

/// What a request wants to do, and to which tenant.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Create a tenant.
    CreateTenant,
    /// Create or revoke tokens of a tenant.
    ManageTokens(&'a str),
    /// Create, list or read keys of a tenant.
    ManageKeys(&'a str),
    /// Read a public key of a tenant.
    ReadPublicKey(&'a str),
    /// Generate a data key.
    GenerateDataKey(&'a str),
    /// Decrypt a data key.
    DecryptDataKey(&'a str),
    /// Re-wrap a data key to the newest version (opens it, never reveals it).
    RewrapDataKey(&'a str),
    /// Read the audit log (the handler narrows a tenant admin to its tenant).
    ReadAudit,
    /// Verify the whole audit chain.
    VerifyAudit,
    /// Re-seal tenant keys under a new root key.
    ManageRootKey,
    /// Obtain a field's blind-index key (an equality-search key, never a data key): the roles
    /// that write indexed fields (`encrypt`) and the ones that look them up (`decrypt`).
    DeriveBlindIndexKey(&'a str),
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The token lacks the role, or names a tenant outside its scope. One answer for both, and
    /// the same whether or not that tenant exists.
    Forbidden,
}

impl Principal {
    fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Is `tenant` the token's own tenant?
    fn owns(&self, tenant: &str) -> bool {
        self.tenant.as_deref() == Some(tenant)
    }

    /// Deny by default: each action lists who may do it.
    pub fn authorize(&self, action: Action<'_>) -> Result<(), Denied> {
        let allowed = match action {
            Action::CreateTenant => self.has(Role::Operator),
            Action::ManageTokens(t) => {
                self.has(Role::Operator) || (self.has(Role::TenantAdmin) && self.owns(t))
            }
            Action::ManageKeys(t) => self.has(Role::TenantAdmin) && self.owns(t),
            Action::ReadPublicKey(t) => {
                (self.has(Role::Encrypt) || self.has(Role::TenantAdmin)) && self.owns(t)
            }
            Action::GenerateDataKey(t) => self.has(Role::Encrypt) && self.owns(t),
            Action::DecryptDataKey(t) | Action::RewrapDataKey(t) => {
                self.has(Role::Decrypt) && self.owns(t)
            }
            Action::ReadAudit => self.has(Role::Operator) || self.has(Role::TenantAdmin),
            Action::VerifyAudit | Action::ManageRootKey => self.has(Role::Operator),
            Action::DeriveBlindIndexKey(t) => {
                (self.has(Role::Encrypt) || self.has(Role::Decrypt)) && self.owns(t)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        }
    }

    /// Build from a stored token, refusing revoked and expired ones.
    pub fn from_token(row: TokenRow, now_ms: i64) -> Option<Principal> {
        if row.revoked_at.is_some() || row.expires_at.is_some_and(|t| t <= now_ms) {
            return None;
        }
        let roles = parse_roles(&row.roles)?;
        // A tenant token whose tenant vanished has no scope left: refuse it.
        if row.tenant_id.is_some() && row.tenant_name.is_none() {
            return None;
        }
        Some(Principal {
            token_id: row.id,
            tenant: row.tenant_name,
            roles,
        })
    }
}

/// Parse a stored comma-separated role list; `None` if any entry is unknown.
pub fn parse_roles(s: &str) -> Option<Vec<Role>> {
    s.split(',').map(Role::parse).collect()
}

/// Prefix of every bearer token, so leaked tokens are recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "pqkms_";

/// A fresh bearer token (shown once) and its id. The secret is 32 random bytes.
pub fn new_token() -> Result<(Zeroizing<String>, String), getrandom::Error> {
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut secret[..])?;
    let mut id = [0u8; 8];
    getrandom::fill(&mut id)?;
    let token = Zeroizing::new(format!("{TOKEN_PREFIX}{}", hex::encode(&secret[..])));
    Ok((token, format!("tok_{}", hex::encode(id))))
}

/// What the database stores for a token: hex SHA-256. A fast hash suffices because the token has
/// 256 bits of entropy (no dictionary to attack), and it lets lookup be one indexed query.
pub fn token_hash(token: &str) -> String {
    crate::hex_lower(&Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(tenant: Option<&str>, roles: &[Role]) -> Principal {
        Principal {
            token_id: "t".into(),
            tenant: tenant.map(str::to_owned),
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn operator_never_touches_data_keys_and_tenants_stay_in_scope() {
        let op = p(None, &[Role::Operator]);
        assert!(op.authorize(Action::GenerateDataKey("a")).is_err());
        assert!(op.authorize(Action::DecryptDataKey("a")).is_err());
        assert!(op.authorize(Action::ManageTokens("a")).is_ok());
        let enc = p(Some("a"), &[Role::Encrypt]);
        assert!(enc.authorize(Action::GenerateDataKey("a")).is_ok());
        assert!(enc.authorize(Action::GenerateDataKey("b")).is_err());
        assert!(enc.authorize(Action::DecryptDataKey("a")).is_err());
    }

    #[test]
    fn blind_index_keys_go_to_encrypt_and_decrypt_of_the_own_tenant_only() {
        for roles in [
            &[Role::Encrypt][..],
            &[Role::Decrypt],
            &[Role::Encrypt, Role::Decrypt],
        ] {
            let t = p(Some("a"), roles);
            assert!(t.authorize(Action::DeriveBlindIndexKey("a")).is_ok());
            assert!(t.authorize(Action::DeriveBlindIndexKey("b")).is_err());
        }
        for denied in [
            p(Some("a"), &[Role::TenantAdmin]),
            p(None, &[Role::Operator]),
        ] {
            assert!(denied.authorize(Action::DeriveBlindIndexKey("a")).is_err());
        }
    }

    #[test]
    fn expired_revoked_and_orphaned_tokens_are_refused() {
        let row = |expires_at, revoked_at, tenant_name: Option<&str>| TokenRow {
            id: "t".into(),
            token_hash: String::new(),
            tenant_id: Some("x".into()),
            tenant_name: tenant_name.map(str::to_owned),
            roles: "encrypt".into(),
            created_at: 0,
            expires_at,
            revoked_at,
        };
        assert!(Principal::from_token(row(None, None, Some("a")), 10).is_some());
        assert!(Principal::from_token(row(Some(10), None, Some("a")), 10).is_none());
        assert!(Principal::from_token(row(None, Some(5), Some("a")), 10).is_none());
        assert!(Principal::from_token(row(None, None, None), 10).is_none());
    }

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let (a, _) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(*a, *b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(token_hash(&a), token_hash(&a.clone()));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
