//! `defectflow discover --onvif URL`: asks an ONVIF camera (Profile S) for its media
//! profiles and their RTSP stream URIs, and writes ready-to-paste `[[cameras]]` entries.
//!
//! The requests are SOAP 1.2 over HTTP, as the ONVIF Core and Media specifications give
//! them: `GetCapabilities` on the device service names the media service, `GetProfiles`
//! lists the profiles (token, name, video encoder and resolution) and `GetStreamUri`
//! (RTP-Unicast over RTSP) gives each profile's URI. A camera whose capabilities name no
//! Media service is asked `GetServices` for Media2 (ver20, Profile T), and then its
//! `GetProfiles` and `GetStreamUri` (`RtspUnicast`). Every request carries a WS-Security
//! `UsernameToken` with a password digest (Base64(SHA-1(nonce + created + password)),
//! OASIS WSS UsernameToken Profile 1.0) when credentials are given; a camera that
//! answers 401 with an HTTP digest challenge gets the request again with its
//! `Authorization: Digest` answer (RFC 7616, MD5, qop `auth`). The credentials come from
//! environment variables, and the entries name the same variables, so no secret is
//! printed.
//!
//! WS-Discovery (`defectflow discover --ws-discovery`): a SOAP-over-UDP `Probe` for
//! `dn:NetworkVideoTransmitter` to the multicast group 239.255.255.250:3702 (WS-Discovery
//! 2005/04, as ONVIF Core specifies) finds the cameras on the local segment; each
//! `ProbeMatch` names the device service address(es) asked as above.

use std::fmt::Write as _;
use std::time::Duration;

mod auth;
mod probe;

use auth::{cnonce, request_target, security_header};
pub use auth::{digest_authorization, password_digest};
pub use probe::probe;

const DEVICE_NS: &str = "http://www.onvif.org/ver10/device/wsdl";
const MEDIA_NS: &str = "http://www.onvif.org/ver10/media/wsdl";
const MEDIA2_NS: &str = "http://www.onvif.org/ver20/media/wsdl";

/// Credentials for the camera, and the environment variables they came from.
#[derive(Clone, Debug)]
pub struct Login {
    pub username: String,
    pub password: String,
    pub username_env: String,
    pub password_env: String,
}

/// One media profile of the camera.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub token: String,
    pub name: String,
    pub encoding: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub uri: String,
}

/// Why discovery failed, saying which step.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("ONVIF {operation} at {url}: {reason}")]
    Request { operation: &'static str, url: String, reason: String },
    #[error("ONVIF {operation} at {url}: the camera refused the credentials ({reason})")]
    Unauthorized { operation: &'static str, url: String, reason: String },
}

/// The camera's profiles with their stream URIs.
pub fn discover(device_url: &str, login: Option<&Login>) -> Result<Vec<Profile>, DiscoverError> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let capabilities = call(
        &agent,
        device_url,
        "GetCapabilities",
        &format!(
            "<tds:GetCapabilities xmlns:tds=\"{DEVICE_NS}\"><tds:Category>Media</tds:Category></tds:GetCapabilities>"
        ),
        login,
    )?;
    let media = element(&capabilities, "Media").and_then(|media| element(media, "XAddr")).map(|x| x.trim().to_owned());
    let (media_url, media2) = match media {
        Some(url) => (url, false),
        // A device without GetServices (or Media2) is asked at its own address.
        None => match media2_address(&agent, device_url, login) {
            Ok(Some(url)) => (url, true),
            Ok(None) | Err(DiscoverError::Request { .. }) => (device_url.to_owned(), false),
            Err(unauthorized) => return Err(unauthorized),
        },
    };
    let request = if media2 {
        format!("<tr2:GetProfiles xmlns:tr2=\"{MEDIA2_NS}\"><tr2:Type>All</tr2:Type></tr2:GetProfiles>")
    } else {
        format!("<trt:GetProfiles xmlns:trt=\"{MEDIA_NS}\"/>")
    };
    let profiles = call(&agent, &media_url, "GetProfiles", &request, login)?;
    let mut out = Vec::new();
    for (attributes, profile) in elements(&profiles, "Profiles") {
        let Some(token) = attribute(attributes, "token") else { continue };
        // Media's VideoEncoderConfiguration; Media2's Configurations/VideoEncoder.
        let encoder = element(profile, "VideoEncoderConfiguration").or_else(|| element(profile, "VideoEncoder"));
        let resolution = encoder.and_then(|e| element(e, "Resolution"));
        let number = |name: &str| resolution.and_then(|r| element(r, name)).and_then(|v| v.trim().parse().ok());
        let request = if media2 {
            format!(
                "<tr2:GetStreamUri xmlns:tr2=\"{MEDIA2_NS}\"><tr2:Protocol>RtspUnicast</tr2:Protocol>\
                 <tr2:ProfileToken>{}</tr2:ProfileToken></tr2:GetStreamUri>",
                escape(&token)
            )
        } else {
            format!(
                "<trt:GetStreamUri xmlns:trt=\"{MEDIA_NS}\" xmlns:tt=\"http://www.onvif.org/ver10/schema\">\
                 <trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport><tt:Protocol>RTSP</tt:Protocol>\
                 </tt:Transport></trt:StreamSetup><trt:ProfileToken>{}</trt:ProfileToken></trt:GetStreamUri>",
                escape(&token)
            )
        };
        let answer = call(&agent, &media_url, "GetStreamUri", &request, login)?;
        let Some(uri) = element(&answer, "Uri") else {
            return Err(DiscoverError::Request {
                operation: "GetStreamUri",
                url: media_url.clone(),
                reason: format!("no Uri in the answer for profile {token}"),
            });
        };
        out.push(Profile {
            name: element(profile, "Name").map_or_else(|| token.clone(), |n| unescape(n.trim())),
            token,
            encoding: encoder.and_then(|e| element(e, "Encoding")).map(|e| e.trim().to_owned()),
            width: number("Width"),
            height: number("Height"),
            uri: unescape(uri.trim()),
        });
    }
    Ok(out)
}

/// The Media2 service's address, from the device's `GetServices`; `None` where it has none.
fn media2_address(
    agent: &ureq::Agent,
    device_url: &str,
    login: Option<&Login>,
) -> Result<Option<String>, DiscoverError> {
    let request = format!(
        "<tds:GetServices xmlns:tds=\"{DEVICE_NS}\"><tds:IncludeCapability>false</tds:IncludeCapability></tds:GetServices>"
    );
    let services = call(agent, device_url, "GetServices", &request, login)?;
    let media2 = elements(&services, "Service")
        .into_iter()
        .find(|(_, service)| element(service, "Namespace").is_some_and(|ns| ns.trim() == MEDIA2_NS));
    Ok(media2.and_then(|(_, service)| element(service, "XAddr")).map(|x| x.trim().to_owned()))
}

/// `[[cameras]]` entries for the profiles, ids from `prefix` and the profile token.
pub fn camera_entries(prefix: &str, profiles: &[Profile], login: Option<&Login>) -> String {
    let mut out = String::new();
    for profile in profiles {
        let id: String = format!("{prefix}-{}", profile.token)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
            .collect();
        let source = match (profile.width, profile.height) {
            (Some(w), Some(h)) => format!("{w}x{h}"),
            _ => "size not given".into(),
        };
        let encoding = profile.encoding.as_deref().unwrap_or("encoding not given");
        let _ = writeln!(out, "# {} ({encoding}, {source})", profile.name);
        let _ = writeln!(out, "[[cameras]]\nid = \"{id}\"\nurl = \"{}\"", profile.uri.replace('"', "%22"));
        if let Some(login) = login {
            let _ = writeln!(
                out,
                "[cameras.credentials]\nusername_env = \"{}\"\npassword_env = \"{}\"",
                login.username_env, login.password_env
            );
        }
        out.push('\n');
    }
    out
}

/// One SOAP 1.2 call; the body of the answer's envelope.
fn call(
    agent: &ureq::Agent,
    url: &str,
    operation: &'static str,
    body: &str,
    login: Option<&Login>,
) -> Result<String, DiscoverError> {
    let header = login.map(security_header).unwrap_or_default();
    let envelope = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Header>{header}</s:Header>\
         <s:Body>{body}</s:Body></s:Envelope>"
    );
    let failed = |reason: String| DiscoverError::Request { operation, url: url.to_owned(), reason };
    let post = || agent.post(url).set("Content-Type", "application/soap+xml; charset=utf-8");
    let mut response = post().send_string(&envelope);
    // A camera that wants HTTP digest authentication says so with a 401 challenge
    // (among others, perhaps: Basic first).
    if let (Err(ureq::Error::Status(401, answer)), Some(login)) = (&response, login)
        && let Some(authorization) = answer
            .all("WWW-Authenticate")
            .into_iter()
            .find_map(|challenge| digest_authorization(login, challenge, "POST", request_target(url), &cnonce()))
    {
        response = post().set("Authorization", &authorization).send_string(&envelope);
    }
    match response {
        Ok(r) => r.into_string().map_err(|e| failed(e.to_string())),
        Err(ureq::Error::Status(status, r)) => {
            let text = r.into_string().unwrap_or_default();
            let reason = element(&text, "Text")
                .or_else(|| element(&text, "Reason"))
                .map_or_else(|| format!("HTTP {status}"), |t| format!("HTTP {status}: {}", t.trim()));
            if status == 401 || text.contains("NotAuthorized") || text.contains("FailedAuthentication") {
                Err(DiscoverError::Unauthorized { operation, url: url.to_owned(), reason })
            } else {
                Err(failed(reason))
            }
        }
        Err(error) => Err(failed(error.to_string())),
    }
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(super) fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// Each element with local name `name` (any namespace prefix): its attributes' text and
/// its content. Enough XML for ONVIF's answers: no CDATA, no comments inside.
pub(super) fn elements<'a>(xml: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let end = after.find('>').unwrap_or(after.len());
        let tag = &after[..end];
        let tag_name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or_default();
        let local = tag_name.rsplit(':').next().unwrap_or_default();
        if local != name || tag.starts_with('/') {
            rest = &after[end.min(after.len())..];
            continue;
        }
        let attributes = tag[tag_name.len()..].trim_end_matches('/');
        if tag.ends_with('/') {
            out.push((attributes, ""));
            rest = &after[end..];
            continue;
        }
        let content_start = &after[end + 1..];
        let close = format!("</{tag_name}>");
        let Some(close_at) = content_start.find(&close) else { break };
        out.push((attributes, &content_start[..close_at]));
        rest = &content_start[close_at + close.len()..];
    }
    out
}

/// The content of the first element with local name `name`.
pub(super) fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    elements(xml, name).into_iter().next().map(|(_, content)| content)
}

fn attribute(attributes: &str, name: &str) -> Option<String> {
    let at = attributes.find(&format!("{name}=\""))?;
    let value = &attributes[at + name.len() + 2..];
    Some(unescape(&value[..value.find('"')?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_by_local_name_whatever_the_prefix() {
        let xml = r#"<trt:Profiles token="p&amp;1" fixed="true"><tt:Name>Main</tt:Name></trt:Profiles><trt:Profiles token="p2"/>"#;
        let found = elements(xml, "Profiles");
        assert_eq!(found.len(), 2);
        assert_eq!(attribute(found[0].0, "token").as_deref(), Some("p&1"));
        assert_eq!(element(found[0].1, "Name"), Some("Main"));
        assert_eq!(attribute(found[1].0, "token").as_deref(), Some("p2"));
    }
}
