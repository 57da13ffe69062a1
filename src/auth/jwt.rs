//! etcd's JWT auth tokens (`--auth-token jwt,pub-key=…,priv-key=…,
//! sign-method=…,ttl=…`): a token is a signed JWT with the claims
//! `username`, `revision` (the auth revision it was issued at) and `exp`.
//! Any member holding the public key can verify it; nothing is kept in
//! memory. Unlike simple tokens, a JWT carries its auth revision: after an
//! auth change it is refused with `revision of auth store is old`, and the
//! client authenticates again (as with etcd).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::error::EtcdError;

/// The `jwt` form of `--auth-token`, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// `sign-method`: RS256/384/512, PS256/384/512, ES256/384.
    pub sign_method: String,
    /// `pub-key`: PEM file verifying tokens.
    pub pub_key: PathBuf,
    /// `priv-key`: PEM file signing them; without it the member only
    /// verifies (Authenticate fails).
    pub priv_key: Option<PathBuf>,
    /// `ttl`: a token's lifetime (etcd's default 5 minutes).
    pub ttl: Duration,
}

/// Whether `method` is a sign method cairn supports (config validation).
pub fn check_sign_method(method: &str) -> Result<(), String> {
    algorithm(method).map(|_| ())
}

fn algorithm(method: &str) -> Result<Algorithm, String> {
    match method {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        other => Err(format!("unsupported jwt sign-method {other:?}")),
    }
}

/// Loaded keys: signs and verifies tokens.
pub struct Jwt {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl Jwt {
    /// Reads the key files (at start-up: a bad key stops it with the path).
    pub fn load(cfg: &JwtConfig) -> Result<Jwt, String> {
        let algorithm = algorithm(&cfg.sign_method)?;
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read jwt key {}: {e}", path.display()))
        };
        let rsa = !matches!(algorithm, Algorithm::ES256 | Algorithm::ES384);
        let public = read(&cfg.pub_key)?;
        let decoding = if rsa {
            DecodingKey::from_rsa_pem(&public)
        } else {
            DecodingKey::from_ec_pem(&public)
        }
        .map_err(|e| format!("jwt pub-key {}: {e}", cfg.pub_key.display()))?;
        let encoding = match &cfg.priv_key {
            None => None,
            Some(path) => {
                let private = read(path)?;
                Some(
                    if rsa {
                        EncodingKey::from_rsa_pem(&private)
                    } else {
                        EncodingKey::from_ec_pem(&private)
                    }
                    .map_err(|e| format!("jwt priv-key {}: {e}", path.display()))?,
                )
            }
        };
        Ok(Jwt {
            algorithm,
            encoding,
            decoding,
            ttl: cfg.ttl,
        })
    }

    /// A token for `user` at auth revision `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, EtcdError> {
        let Some(key) = &self.encoding else {
            // Verify-only member: it cannot issue tokens.
            return Err(EtcdError::AuthFailed);
        };
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl)
            .as_secs();
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|_| EtcdError::AuthFailed)
    }

    /// The user and auth revision of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}
