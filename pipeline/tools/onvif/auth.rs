//! ONVIF credentials on the wire: the WS-Security `UsernameToken` with its password
//! digest (OASIS WSS UsernameToken Profile 1.0) in every SOAP header, and the HTTP
//! `Authorization: Digest` answer (RFC 7616, MD5) for a camera that challenges with 401.

use sha1::{Digest, Sha1};

use super::{Login, escape};
use crate::bridge::mapping::base64;

/// The path and query of `url`: the `uri` an HTTP digest answer covers.
pub(super) fn request_target(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or("/", |at| &rest[at..])
}

/// The `Authorization` header answering an HTTP `Digest` challenge (RFC 7616 with MD5,
/// RFC 2617's form where the challenge names no qop); `None` for another scheme or
/// algorithm.
pub fn digest_authorization(login: &Login, challenge: &str, method: &str, uri: &str, cnonce: &str) -> Option<String> {
    let params = challenge_params(challenge.trim().strip_prefix("Digest")?);
    let param = |name: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    if param("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
        return None;
    }
    let (realm, nonce) = (param("realm")?, param("nonce")?);
    let hex = |text: String| format!("{:x}", md5::compute(text));
    let ha1 = hex(format!("{}:{realm}:{}", login.username, login.password));
    let ha2 = hex(format!("{method}:{uri}"));
    let auth = param("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
    let mut header =
        format!("Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\"", login.username);
    if auth {
        let response = hex(format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        header.push_str(&format!(", qop=auth, nc=00000001, cnonce=\"{cnonce}\", response=\"{response}\""));
    } else {
        header.push_str(&format!(", response=\"{}\"", hex(format!("{ha1}:{nonce}:{ha2}"))));
    }
    if let Some(opaque) = param("opaque") {
        header.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Some(header + ", algorithm=MD5")
}

/// A challenge's `name=value` parameters, values unquoted (a quoted one may hold commas
/// and `\"`).
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if chars.next_if_eq(&'=').is_none() {
            return params;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        params.push((name.trim().to_owned(), value));
    }
}

pub(super) fn cnonce() -> String {
    nonce().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The WS-Security header with a `UsernameToken` and its password digest.
pub(super) fn security_header(login: &Login) -> String {
    let created = crate::clock::rfc3339(crate::clock::now_ms());
    let nonce = nonce();
    let digest = password_digest(&nonce, &created, &login.password);
    format!(
        "<wsse:Security s:mustUnderstand=\"1\" \
         xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" \
         xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\">\
         <wsse:UsernameToken><wsse:Username>{}</wsse:Username>\
         <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest\">{digest}</wsse:Password>\
         <wsse:Nonce EncodingType=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary\">{}</wsse:Nonce>\
         <wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>",
        escape(&login.username),
        base64(&nonce)
    )
}

/// Base64(SHA-1(nonce + created + password)).
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(nonce);
    sha.update(created.as_bytes());
    sha.update(password.as_bytes());
    base64(&sha.finalize())
}

/// 16 bytes that differ from call to call (time, process, a counter, hashed).
pub(super) fn nonce() -> Vec<u8> {
    use sha2::Digest as _;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut sha = sha2::Sha256::new();
    sha.update(now.to_le_bytes());
    sha.update(std::process::id().to_le_bytes());
    sha.update(n.to_le_bytes());
    sha.finalize()[..16].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_digest_is_base64_sha1_of_nonce_created_password() {
        // The value Python's hashlib and base64 give for the same inputs.
        let nonce = [0x2c, 0xaa, 0x88, 0xe8, 0x6f, 0xc0, 0x8a, 0x42, 0x82, 0x42, 0xb3, 0x74, 0xce, 0xa6, 0x45, 0x96];
        assert_eq!(base64(&nonce), "LKqI6G/AikKCQrN0zqZFlg==");
        assert_eq!(password_digest(&nonce, "2003-07-16T01:24:32Z", "taadtaadpstcsm"), "vjwUgK9DkI4e3lonFkyGHvQPKlE=");
    }

    /// RFC 2617's worked example (section 3.5), and its form without qop.
    #[test]
    fn the_http_digest_answer_is_the_rfcs() {
        let login = Login {
            username: "Mufasa".into(),
            password: "Circle Of Life".into(),
            username_env: String::new(),
            password_env: String::new(),
        };
        let challenge = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
                         nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let header = digest_authorization(&login, challenge, "GET", "/dir/index.html", "0a4f113b").expect("digest");
        assert!(header.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{header}");
        assert!(header.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"") && header.contains("nc=00000001"));
        assert!(digest_authorization(&login, "Basic realm=\"x\"", "GET", "/", "c").is_none());
        // Commas inside a quoted value, the qop list in another order.
        let quoted = challenge.replace("testrealm@host.com", "test, realm").replace("auth,auth-int", "auth-int,auth");
        let header = digest_authorization(&login, &quoted, "GET", "/dir/index.html", "0a4f113b").expect("digest");
        assert!(header.contains("realm=\"test, realm\"") && header.contains("qop=auth,"), "{header}");
        // Without qop, RFC 2069's form: MD5(HA1:nonce:HA2), HA1 and HA2 as above.
        let ha1 = format!("{:x}", md5::compute("Mufasa:testrealm@host.com:Circle Of Life"));
        let ha2 = format!("{:x}", md5::compute("GET:/dir/index.html"));
        let plain = format!("{:x}", md5::compute(format!("{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}")));
        let bare = "Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"";
        let header = digest_authorization(&login, bare, "GET", "/dir/index.html", "c").expect("digest");
        assert!(header.contains(&format!("response=\"{plain}\"")) && !header.contains("qop"), "{header}");
        assert!(
            digest_authorization(&login, "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-256", "GET", "/", "c")
                .is_none()
        );
        assert_eq!(request_target("http://10.1.4.20:8080/onvif/device_service"), "/onvif/device_service");
    }
}
