//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it: verifier
//! format, message parsing for both roles, and the key arithmetic.
//!
//! pgveil is the SCRAM *server* towards the client (it holds the user's
//! verifier: StoredKey and ServerKey, never the password) and the SCRAM
//! *client* towards PostgreSQL, where it proves itself with the ClientKey it
//! recovered from the client's proof.
//!
//! Nothing here logs; `Debug` of secret-bearing types is redacted.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The SASL mechanism name without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL mechanism name with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type PostgreSQL supports.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
/// PostgreSQL's default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`.
pub const DEFAULT_SALT_LEN: usize = 16;
/// PostgreSQL's `SCRAM_RAW_NONCE_LEN`.
pub const RAW_NONCE_LEN: usize = 18;

/// SQLSTATEs PostgreSQL uses for SCRAM errors: a protocol violation.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE for an unsupported SCRAM feature.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE for a channel binding failure.
pub const INVALID_AUTHORIZATION: &str = "28000";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256 of the concatenation of `parts`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(data));
    out
}

/// `Hi()` of RFC 5802: PBKDF2-HMAC-SHA-256 with one output block.
pub fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut acc = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (a, b) in acc.iter_mut().zip(u.iter()) {
            *a ^= b;
        }
    }
    u.zeroize();
    acc
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

/// A SCRAM-SHA-256 secret as stored in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt, decoded.
    pub salt: Vec<u8>,
    /// StoredKey = H(ClientKey).
    pub stored_key: [u8; 32],
    /// ServerKey, for the ServerSignature.
    pub server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.stored_key.zeroize();
        self.server_key.zeroize();
    }
}

impl Verifier {
    /// Parse exactly as PostgreSQL's `parse_scram_secret` does: scheme
    /// `SCRAM-SHA-256`, a decimal iteration count, a base64 salt, and two
    /// base64 keys of 32 bytes each.
    pub fn parse(secret: &str) -> Option<Verifier> {
        let mut parts = secret.split('$');
        let scheme = parts.next()?;
        let iter_salt = parts.next()?;
        let keys = parts.next()?;
        if parts.next().is_some() || scheme != SCRAM_SHA_256 {
            return None;
        }
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iterations: u32 = iter.parse().ok()?;
        if iterations == 0 {
            return None;
        }
        let salt = B64.decode(salt).ok()?;
        if salt.is_empty() {
            return None;
        }
        let stored_key: [u8; 32] = B64.decode(stored).ok()?.try_into().ok()?;
        let server_key: [u8; 32] = B64.decode(server).ok()?.try_into().ok()?;
        Some(Verifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// The verifier PostgreSQL would store for `password` with this salt and
    /// iteration count (the password is SASLprep-normalised first, and used
    /// as is when it is not valid for SASLprep, as PostgreSQL does).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let mut normalized = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned(),
            Err(_) => password.to_string(),
        };
        let mut salted = hi(normalized.as_bytes(), salt, iterations);
        normalized.zeroize();
        let mut client_key = hmac(&salted, &[b"Client Key"]);
        let server_key = hmac(&salted, &[b"Server Key"]);
        let stored_key = sha256(&client_key);
        salted.zeroize();
        client_key.zeroize();
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key,
        }
    }

    /// The `pg_authid.rolpassword` text form.
    pub fn encode(&self) -> String {
        format!(
            "{SCRAM_SHA_256}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Check a ClientProof against StoredKey in constant time and recover
    /// the ClientKey: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage),
    /// accepted when H(ClientKey) == StoredKey.
    pub fn verify_client_proof(&self, auth_message: &[u8], proof: &[u8; 32]) -> Option<ClientKey> {
        let mut signature = hmac(&self.stored_key, &[auth_message]);
        let client_key = xor32(proof, &signature);
        signature.zeroize();
        let ok: bool = sha256(&client_key).ct_eq(&self.stored_key).into();
        let key = ClientKey(client_key);
        ok.then_some(key)
    }

    /// ServerSignature = HMAC(ServerKey, AuthMessage).
    pub fn server_signature(&self, auth_message: &[u8]) -> [u8; 32] {
        hmac(&self.server_key, &[auth_message])
    }

    /// Whether `ServerSignature` in a server-final message is right, in
    /// constant time.
    pub fn check_server_signature(&self, auth_message: &[u8], signature: &[u8]) -> bool {
        signature.ct_eq(&self.server_signature(auth_message)).into()
    }
}

/// The ClientKey recovered from a valid proof: enough to log in to
/// PostgreSQL as the user, never stored beyond the authentication.
pub struct ClientKey([u8; 32]);

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

impl Drop for ClientKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ClientKey {
    /// ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage).
    pub fn proof(&self, stored_key: &[u8; 32], auth_message: &[u8]) -> [u8; 32] {
        let mut signature = hmac(stored_key, &[auth_message]);
        let proof = xor32(&self.0, &signature);
        signature.zeroize();
        proof
    }
}

/// What a stored password entry holds (`pg_authid.rolpassword` or a
/// userlist line), classified as PostgreSQL's `get_password_type` does.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A SCRAM-SHA-256 verifier.
    Scram(Verifier),
    /// `md5` + 32 hex digits: useless for SCRAM.
    Md5,
    /// A plaintext password (userlist files only).
    Plain(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Scram(_) => f.write_str("Secret::Scram(<redacted>)"),
            Secret::Md5 => f.write_str("Secret::Md5(<redacted>)"),
            Secret::Plain(_) => f.write_str("Secret::Plain(<redacted>)"),
        }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        if let Secret::Plain(p) = self {
            p.zeroize();
        }
    }
}

impl Secret {
    /// Classify a stored entry: md5, SCRAM verifier, else plaintext.
    pub fn classify(s: &str) -> Secret {
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Secret::Md5;
        }
        match Verifier::parse(s) {
            Some(v) => Secret::Scram(v),
            None => Secret::Plain(s.to_string()),
        }
    }
}

/// A SCRAM exchange error, reported like PostgreSQL reports it: SQLSTATE
/// (08P01 for protocol violations, 0A000 for unsupported features, 28000
/// for channel binding failures), message and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramError {
    /// SQLSTATE.
    pub code: &'static str,
    /// Primary message.
    pub message: String,
    /// Detail, if any.
    pub detail: Option<String>,
}

impl ScramError {
    fn malformed(detail: impl Into<String>) -> ScramError {
        ScramError {
            code: PROTOCOL_VIOLATION,
            message: "malformed SCRAM message".into(),
            detail: Some(detail.into()),
        }
    }

    /// An error without detail.
    pub fn new(code: &'static str, message: impl Into<String>) -> ScramError {
        ScramError {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// The same error with `detail`.
    pub fn with_detail(mut self, detail: impl Into<String>) -> ScramError {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The gs2 channel-binding flag of a client-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gs2Flag {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    Yes,
    /// `p=<type>`: the client uses channel binding of this type.
    Bound(String),
}

/// A parsed client-first-message.
#[derive(Debug, Clone)]
pub struct ClientFirst {
    /// The GS2 channel-binding flag.
    pub flag: Gs2Flag,
    /// The gs2 header, e.g. `n,,` (echoed base64 in the final message).
    pub gs2_header: String,
    /// client-first-message-bare (part of AuthMessage).
    pub bare: String,
    /// The client nonce.
    pub nonce: String,
}

fn is_printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Read `<attr>=<value>` up to the next `,` (or the end).
fn read_attr<'a>(input: &mut &'a str, attr: char, what: &str) -> Result<&'a str, ScramError> {
    let s = *input;
    let mut chars = s.chars();
    if chars.next() != Some(attr) || chars.next() != Some('=') {
        return Err(ScramError::malformed(format!(
            "Expected attribute \"{attr}\" but found \"{}\" in {what}.",
            sanitize(s.chars().next())
        )));
    }
    let rest = &s[2..];
    let (value, tail) = match rest.find(',') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    *input = tail;
    Ok(value)
}

fn sanitize(c: Option<char>) -> String {
    match c {
        Some(c) if c.is_ascii_graphic() => c.to_string(),
        Some(_) => "?".into(),
        None => "".into(),
    }
}

/// Parse a client-first-message as PostgreSQL's `read_client_first_message`
/// does. `plus` says whether the client selected SCRAM-SHA-256-PLUS.
pub fn parse_client_first(data: &[u8], plus: bool) -> Result<ClientFirst, ScramError> {
    let text = std::str::from_utf8(data)
        .map_err(|_| ScramError::malformed("The message is not valid UTF-8."))?;
    let mut input = text;
    let flag = match input.as_bytes().first() {
        Some(b'n') | Some(b'y') => {
            let f = if input.starts_with('n') {
                Gs2Flag::No
            } else {
                Gs2Flag::Yes
            };
            if plus {
                return Err(ScramError::malformed(
                    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.",
                ));
            }
            if input.as_bytes().get(1) != Some(&b',') {
                return Err(ScramError::malformed(
                    "Comma expected, but found character \"?\".",
                ));
            }
            input = &input[2..];
            f
        }
        Some(b'p') => {
            if !plus {
                return Err(ScramError::malformed(
                    "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.",
                ));
            }
            let t = read_attr(&mut input, 'p', "client-first-message")?;
            Gs2Flag::Bound(t.to_string())
        }
        _ => {
            return Err(ScramError::malformed(
                "Unexpected channel-binding flag in client-first-message.",
            ));
        }
    };
    // authzid
    if input.starts_with('a') {
        return Err(ScramError::new(
            FEATURE_NOT_SUPPORTED,
            "client uses authorization identity, but it is not supported",
        ));
    }
    if !input.starts_with(',') {
        return Err(ScramError::malformed(
            "Unexpected attribute in client-first-message.",
        ));
    }
    input = &input[1..];
    let gs2_header = text[..text.len() - input.len()].to_string();
    let bare = input.to_string();
    if input.starts_with('m') {
        return Err(ScramError::new(
            FEATURE_NOT_SUPPORTED,
            "client requires an unsupported SCRAM extension",
        ));
    }
    let _user = read_attr(&mut input, 'n', "client-first-message")?;
    let nonce = read_attr(&mut input, 'r', "client-first-message")?;
    if !is_printable_nonce(nonce) {
        return Err(ScramError::malformed(
            "non-printable characters in SCRAM nonce",
        ));
    }
    // Any extensions that follow are ignored, as PostgreSQL does.
    Ok(ClientFirst {
        flag,
        gs2_header,
        bare,
        nonce: nonce.to_string(),
    })
}

/// A parsed client-final-message.
#[derive(Debug, Clone)]
pub struct ClientFinal {
    /// Decoded `c=` attribute: gs2 header plus channel binding data.
    pub channel_binding: Vec<u8>,
    /// The combined nonce.
    pub nonce: String,
    /// ClientProof, decoded.
    pub proof: [u8; 32],
    /// client-final-message-without-proof (part of AuthMessage).
    pub without_proof: String,
}

/// Parse a client-final-message as PostgreSQL does.
pub fn parse_client_final(data: &[u8]) -> Result<ClientFinal, ScramError> {
    let text = std::str::from_utf8(data)
        .map_err(|_| ScramError::malformed("The message is not valid UTF-8."))?;
    let mut input = text;
    let c = read_attr(&mut input, 'c', "client-final-message")?;
    let channel_binding = B64
        .decode(c)
        .map_err(|_| ScramError::malformed("Malformed channel binding data."))?;
    let nonce = read_attr(&mut input, 'r', "client-final-message")?.to_string();
    // Extensions until p=.
    loop {
        if input.is_empty() {
            return Err(ScramError::malformed(
                "Expected attribute \"p\" but found end of input in client-final-message.",
            ));
        }
        if input.starts_with("p=") {
            break;
        }
        match input.find(',') {
            Some(i) => input = &input[i + 1..],
            None => input = "",
        }
    }
    let without_proof = text[..text.len() - input.len() - 1].to_string();
    let p = read_attr(&mut input, 'p', "client-final-message")?;
    if !input.is_empty() || text.ends_with(',') {
        return Err(ScramError::malformed(
            "Garbage found at the end of client-final-message.",
        ));
    }
    let proof: [u8; 32] = B64
        .decode(p)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ScramError::malformed("Malformed proof in client-final-message."))?;
    Ok(ClientFinal {
        channel_binding,
        nonce,
        proof,
        without_proof,
    })
}

/// server-first-message: `r=<nonce>,s=<salt>,i=<iterations>`.
pub fn server_first(nonce: &str, salt: &[u8], iterations: u32) -> String {
    format!("r={nonce},s={},i={iterations}", B64.encode(salt))
}

/// A parsed server-first-message (pgveil as the client of PostgreSQL).
#[derive(Debug, Clone)]
pub struct ServerFirst {
    /// The combined nonce.
    pub nonce: String,
    /// The salt, decoded.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
}

/// Parse PostgreSQL's server-first-message; its nonce must extend ours.
pub fn parse_server_first(data: &[u8], client_nonce: &str) -> Result<ServerFirst, String> {
    let text = std::str::from_utf8(data).map_err(|_| "server-first-message is not UTF-8")?;
    let mut input = text;
    if input.starts_with('m') {
        return Err("server requires an unsupported SCRAM extension".into());
    }
    let nonce = read_attr(&mut input, 'r', "server-first-message").map_err(|e| e.to_string())?;
    if !nonce.starts_with(client_nonce) || nonce.len() == client_nonce.len() {
        return Err("server nonce does not extend the client nonce".into());
    }
    if !is_printable_nonce(nonce) {
        return Err("invalid server nonce".into());
    }
    let salt = read_attr(&mut input, 's', "server-first-message").map_err(|e| e.to_string())?;
    let salt = B64
        .decode(salt)
        .map_err(|_| "invalid salt in server-first-message")?;
    let iter = read_attr(&mut input, 'i', "server-first-message").map_err(|e| e.to_string())?;
    let iterations: u32 = iter
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or("invalid iteration count in server-first-message")?;
    Ok(ServerFirst {
        nonce: nonce.to_string(),
        salt,
        iterations,
    })
}

/// server-final-message: `v=<signature>` or `e=<error>`.
pub fn parse_server_final(data: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "server-final-message is not UTF-8")?;
    if let Some(e) = text.strip_prefix("e=") {
        return Err(format!("server reported SCRAM error: {e}"));
    }
    let mut input = text;
    let v = read_attr(&mut input, 'v', "server-final-message").map_err(|e| e.to_string())?;
    B64.decode(v)
        .map_err(|_| "invalid server signature encoding".to_string())
}

/// A fresh random nonce: 18 random bytes, base64 (as PostgreSQL makes them).
pub fn nonce() -> String {
    let mut raw = [0u8; RAW_NONCE_LEN];
    aws_lc_rs::rand::fill(&mut raw).expect("AWS-LC CSPRNG");
    B64.encode(raw)
}

/// Standard base64 of `data`.
pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

#[cfg(test)]
mod tests;
