//! RTSP ingest from a real RTSP server on 127.0.0.1, killed and restarted mid-stream,
//! by a camera decoding every frame and one decoding keyframes only; and ONVIF discovery
//! of a camera whose stream is that server's.

mod support;

use std::time::{Duration, Instant};

use support::{RtspServer, camera_toml, free_port};

#[test]
fn rtsp_camera_reconnects_after_its_server_restarts_while_another_camera_keeps_flowing() {
    let port = free_port();
    let metrics = free_port();
    let server = RtspServer::start(port);
    let retry = "[cameras.reconnect]\ninitial_backoff_ms = 200\nmax_backoff_ms = 1000\nstall_timeout_ms = 2000\n";
    let config = format!("[metrics]\naddress = \"127.0.0.1:{metrics}\"\n")
        + &camera_toml("cam-rtsp", &format!("rtsp://127.0.0.1:{port}/cam"), &format!("decode = \"all\"\n{retry}"))
        // The server sends a keyframe a second: this camera decodes one frame a second.
        + &camera_toml("cam-key", &format!("rtsp://127.0.0.1:{port}/cam"), &format!("decode = \"keyframes\"\n{retry}"))
        + &camera_toml("cam-synth", "synth://belt?seed=4&fps=15&defects=wear@1", "");
    let started = Instant::now();
    let run = support::Running::start(&config, 1);
    let frames = |seen: &[support::Seen], camera: &str, since: Instant| {
        seen.iter().filter(|s| s.camera == camera && s.at > since).count()
    };
    let rtsp_frames = |seen: &[support::Seen], since: Instant| {
        frames(seen, "cam-rtsp", since) >= 15 && frames(seen, "cam-key", since) >= 3
    };

    let killed = run.wait_until("15 frames and 3 keyframes from the RTSP cameras", Duration::from_secs(60), |seen| {
        rtsp_frames(seen, started)
    });
    server.kill();
    // The server stays away until the camera has failed twice (the broken stream, then a
    // refused reconnection) and the synthetic camera has played a second on meanwhile.
    let errors = || {
        support::kafka::http_get(metrics, "/metrics")
            .and_then(|(_, body)| support::kafka::sample(&body, "defectflow_camera_errors_total{camera=\"cam-rtsp\"}"))
    };
    let counted = errors().unwrap_or(0.0);
    let synth_frames =
        |seen: &[support::Seen]| seen.iter().filter(|s| s.camera == "cam-synth" && s.at > killed).count();
    let restarted = run.wait_until(
        "the RTSP camera failing twice while the synthetic camera plays on",
        Duration::from_secs(60),
        |seen| errors().is_some_and(|n| n >= counted + 2.0) && synth_frames(seen) >= 15,
    );
    let _server = RtspServer::start(port);
    run.wait_until(
        "15 frames and 3 keyframes from the RTSP cameras after their server came back",
        Duration::from_secs(60),
        |seen| rtsp_frames(seen, restarted),
    );
    let outcome = run.stop();

    let when = |camera: &str| -> Vec<Duration> {
        outcome.seen.iter().filter(|s| s.camera == camera).map(|s| s.at.duration_since(started)).collect()
    };
    let (killed, restarted) = (killed.duration_since(started), restarted.duration_since(started));
    eprintln!("cam-rtsp: server killed at {killed:?}, started again at {restarted:?}");
    let report = outcome.report("cam-rtsp");
    assert!(report.reconnects >= 1 && report.errors >= 1, "{report:?}");
    assert!(outcome.seen.iter().filter(|s| s.camera.starts_with("cam-")).all(|s| (s.width, s.height) == (320, 180)));
    // The keyframe camera reconnected too, and decoded few of the frames (a keyframe in 15).
    let key = outcome.report("cam-key");
    assert!(key.reconnects >= 1 && key.errors >= 1, "{key:?}");
    assert!(key.skipped_undecoded >= 5 * key.received, "{key:?}");

    // The synthetic camera kept flowing while the RTSP camera was away: the wait for its
    // 15 frames before the server came back is that check.
    let outage = when("cam-synth").into_iter().filter(|t| *t > killed && *t < restarted).count();
    eprintln!("cam-synth: {outage} frames while cam-rtsp was away");
}

/// A local service answering as an ONVIF Profile S camera does (SOAP 1.2: GetCapabilities
/// names the media service, GetProfiles two profiles, GetStreamUri their RTSP URIs),
/// which refuses a request whose WS-Security UsernameToken digest does not check out.
/// Its main profile streams from the real RTSP server on `rtsp_port`.
fn onvif_camera(rtsp_port: u16, user: &'static str, password: &'static str, profile_t: bool) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let (mut length, mut authorization) = (0, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line.to_ascii_lowercase().starts_with("authorization:") {
                    authorization = line["authorization:".len()..].trim().to_owned();
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            let between = |open: &str, close: &str| {
                body.split(open).nth(1).and_then(|r| r.split(close).next()).unwrap_or_default().to_owned()
            };
            let nonce = between("Base64Binary\">", "</wsse:Nonce>");
            let created = between("<wsu:Created>", "</wsu:Created>");
            let sent = between("#PasswordDigest\">", "</wsse:Password>");
            let nonce = base64_decode(&nonce);
            let authorised = if profile_t {
                http_digest_valid(&authorization, user, password)
            } else {
                between("<wsse:Username>", "</wsse:Username>") == user
                    && defectflow::tools::onvif::password_digest(&nonce, &created, password) == sent
            };
            if profile_t && !authorised {
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"onvif\", qop=\"auth\", nonce=\"{DIGEST_NONCE}\", opaque=\"op4\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                continue;
            }
            let answer = if !authorised {
                (400, "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>ter:NotAuthorized</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en\">Sender not Authorized</s:Text></s:Reason></s:Fault>".to_owned())
            } else if body.contains("GetCapabilities") {
                // A Profile T camera's media service is Media2, found through GetServices.
                let media = if profile_t {
                    String::new()
                } else {
                    format!("<tt:Media><tt:XAddr>http://127.0.0.1:{port}/onvif/media_service</tt:XAddr></tt:Media>")
                };
                (
                    200,
                    format!(
                        "<tds:GetCapabilitiesResponse><tds:Capabilities>{media}</tds:Capabilities></tds:GetCapabilitiesResponse>"
                    ),
                )
            } else if body.contains("GetServices") && profile_t {
                (
                    200,
                    format!(
                        "<tds:GetServicesResponse><tds:Service><tds:Namespace>http://www.onvif.org/ver10/device/wsdl</tds:Namespace><tds:XAddr>http://127.0.0.1:{port}/onvif/device_service</tds:XAddr></tds:Service><tds:Service><tds:Namespace>http://www.onvif.org/ver20/media/wsdl</tds:Namespace><tds:XAddr>http://127.0.0.1:{port}/onvif/media2_service</tds:XAddr></tds:Service></tds:GetServicesResponse>"
                    ),
                )
            } else if profile_t != body.contains("http://www.onvif.org/ver20/media/wsdl") {
                (400, "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>ter:ActionNotSupported</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en\">not this media service</s:Text></s:Reason></s:Fault>".to_owned())
            } else if body.contains("GetProfiles") {
                let profile = |token: &str, name: &str, w: u32, h: u32| {
                    let resolution = format!(
                        "<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>{w}</tt:Width><tt:Height>{h}</tt:Height></tt:Resolution>"
                    );
                    if profile_t {
                        format!(
                            "<tr2:Profiles token=\"{token}\" fixed=\"true\"><tr2:Name>{name}</tr2:Name><tr2:Configurations><tr2:VideoEncoder token=\"enc-{token}\">{resolution}</tr2:VideoEncoder></tr2:Configurations></tr2:Profiles>"
                        )
                    } else {
                        format!(
                            "<trt:Profiles token=\"{token}\" fixed=\"true\"><tt:Name>{name}</tt:Name><tt:VideoEncoderConfiguration token=\"enc-{token}\">{resolution}</tt:VideoEncoderConfiguration></trt:Profiles>"
                        )
                    }
                };
                let profiles =
                    [profile("main", "Main stream", 1920, 1080), profile("sub", "Sub stream", 640, 360)].concat();
                (200, format!("<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>"))
            } else if body.contains(":ProfileToken>main</") {
                let uri = format!("rtsp://127.0.0.1:{rtsp_port}/cam");
                if profile_t {
                    (200, format!("<tr2:GetStreamUriResponse><tr2:Uri>{uri}</tr2:Uri></tr2:GetStreamUriResponse>"))
                } else {
                    (
                        200,
                        format!(
                            "<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>{uri}</tt:Uri><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetStreamUriResponse>"
                        ),
                    )
                }
            } else {
                (200, "<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>rtsp://127.0.0.1:1/sub?a=1&amp;b=2</tt:Uri></trt:MediaUri></trt:GetStreamUriResponse>".to_owned())
            };
            let envelope = format!(
                "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:tt=\"http://www.onvif.org/ver10/schema\" xmlns:tds=\"http://www.onvif.org/ver10/device/wsdl\" xmlns:trt=\"http://www.onvif.org/ver10/media/wsdl\" xmlns:tr2=\"http://www.onvif.org/ver20/media/wsdl\"><s:Body>{}</s:Body></s:Envelope>",
                answer.1
            );
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {} X\r\nContent-Type: application/soap+xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{envelope}",
                answer.0,
                envelope.len()
            );
        }
    });
    port
}

const DIGEST_NONCE: &str = "5a1e7f0c9d";

/// Whether an `Authorization: Digest` header answers the server's challenge (realm
/// "onvif", qop auth, POST) for `user` and `password` (RFC 7616, MD5).
fn http_digest_valid(header: &str, user: &str, password: &str) -> bool {
    let Some(params) = header.strip_prefix("Digest ") else { return false };
    let param = |name: &str| {
        params.split(", ").find_map(|p| p.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.trim_matches('"')))
    };
    let (Some(uri), Some(cnonce), Some(nc), Some(response)) =
        (param("uri"), param("cnonce"), param("nc"), param("response"))
    else {
        return false;
    };
    let hex = |text: String| format!("{:x}", md5::compute(text));
    let ha1 = hex(format!("{user}:onvif:{password}"));
    let ha2 = hex(format!("POST:{uri}"));
    param("username") == Some(user)
        && param("nonce") == Some(DIGEST_NONCE)
        && param("opaque") == Some("op4")
        && uri.starts_with("/onvif/")
        && response == hex(format!("{ha1}:{DIGEST_NONCE}:{nc}:{cnonce}:auth:{ha2}"))
}

/// A WS-Discovery responder on 127.0.0.1: answers a probe for network video
/// transmitters with a `ProbeMatch` naming `device` (and ignores other probes).
fn ws_discovery_responder(device: String) -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buffer) {
            let probe = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if !probe.contains("dn:NetworkVideoTransmitter") || !probe.contains("discovery/Probe") {
                continue;
            }
            let id = probe.split("MessageID>").nth(1).and_then(|r| r.split("</").next()).unwrap_or_default();
            let answer = format!(
                "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" xmlns:d=\"http://schemas.xmlsoap.org/ws/2005/04/discovery\"><s:Header><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</a:Action><a:RelatesTo>{id}</a:RelatesTo></s:Header><s:Body><d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:cam-1</a:Address></a:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types><d:XAddrs>{device}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>"
            );
            // A stray answer to another probe first: it must be ignored.
            let _ = socket.send_to(
                answer.replace(id, "urn:uuid:someone-else").replace(&device, "http://127.0.0.1:1/x").as_bytes(),
                from,
            );
            let _ = socket.send_to(answer.as_bytes(), from);
        }
    });
    port
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let values: Vec<u32> = text
        .bytes()
        .filter(|b| *b != b'=')
        .filter_map(|b| ALPHABET.iter().position(|a| *a == b))
        .map(|v| v as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in values.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// `defectflow discover --onvif` against the local ONVIF service: with the right
/// credentials it prints a `[[cameras]]` entry per profile (credentials by environment
/// variable, never the secret), and the main profile's entry, pasted into a config,
/// streams from the real RTSP server; with a wrong password it fails saying so.
#[test]
fn onvif_discovery_prints_camera_entries_that_stream() {
    let rtsp = free_port();
    let _server = RtspServer::start(rtsp);
    let onvif = onvif_camera(rtsp, "viewer", "s3cret", false);
    let discover = |password: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_defectflow"))
            .args(["discover", "--onvif", &format!("http://127.0.0.1:{onvif}/onvif/device_service")])
            .env("ONVIF_USERNAME", "viewer")
            .env("ONVIF_PASSWORD", password)
            .output()
            .expect("discover")
    };
    let refused = discover("wrong");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("GetCapabilities") && stderr.contains("refused the credentials"), "{stderr}");

    let found = discover("s3cret");
    let entries = String::from_utf8_lossy(&found.stdout).into_owned();
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert!(!entries.contains("s3cret"), "the secret is printed:\n{entries}");
    let config: toml::Value = toml::from_str(&entries).expect("the entries are TOML");
    let cameras = config["cameras"].as_array().expect("cameras");
    assert_eq!(cameras.len(), 2, "{entries}");
    assert_eq!(cameras[0]["id"].as_str(), Some("cam-127.0.0.1-main"));
    assert_eq!(cameras[0]["url"].as_str(), Some(format!("rtsp://127.0.0.1:{rtsp}/cam").as_str()));
    assert_eq!(cameras[0]["credentials"]["password_env"].as_str(), Some("ONVIF_PASSWORD"));
    assert_eq!(cameras[1]["url"].as_str(), Some("rtsp://127.0.0.1:1/sub?a=1&b=2"), "entities unescaped");
    assert!(entries.contains("# Main stream (H264, 1920x1080)"), "{entries}");

    // The main profile's entry as pasted into a config, its credentials from the environment.
    let main = entries.split("\n\n").next().expect("first entry");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("discovered.toml");
    std::fs::write(&config, main).expect("config");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_defectflow"))
        .args(["run", "--json", "--duration-s", "5", "--config"])
        .arg(&config)
        .env("ONVIF_USERNAME", "viewer")
        .env("ONVIF_PASSWORD", "s3cret")
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("the JSON report");
    assert_eq!(report["cameras"][0]["camera_id"], "cam-127.0.0.1-main");
    assert!(report["cameras"][0]["frames"].as_u64().is_some_and(|n| n >= 10), "{report}");
}

/// `defectflow discover --ws-discovery`: a probe finds the camera on the (loopback)
/// segment, a stray answer to another probe is ignored, and the camera, a Profile T one
/// that wants HTTP digest authentication rather than WS-Security and offers Media2 only,
/// is asked for its profiles; with a wrong password it fails saying so.
#[test]
fn ws_discovery_finds_a_camera_that_wants_http_digest() {
    let onvif = onvif_camera(8554, "viewer", "s3cret", true);
    let responder = ws_discovery_responder(format!("http://127.0.0.1:{onvif}/onvif/device_service"));
    let discover = |password: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_defectflow"))
            .args(["discover", "--ws-discovery", "--probe-to", &format!("127.0.0.1:{responder}"), "--wait-s", "1"])
            .env("ONVIF_USERNAME", "viewer")
            .env("ONVIF_PASSWORD", password)
            .output()
            .expect("discover")
    };
    let found = discover("s3cret");
    let entries = String::from_utf8_lossy(&found.stdout).into_owned();
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    let config: toml::Value = toml::from_str(&entries).expect("the entries are TOML");
    let cameras = config["cameras"].as_array().expect("cameras");
    assert_eq!(cameras.len(), 2, "one camera found, two profiles: {entries}");
    assert_eq!(cameras[0]["url"].as_str(), Some("rtsp://127.0.0.1:8554/cam"));
    assert!(entries.contains("# Main stream (H264, 1920x1080)"), "Media2's encoder read: {entries}");

    let refused = discover("wrong");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refused the credentials") && stderr.contains("none of the 1 cameras"), "{stderr}");
}
