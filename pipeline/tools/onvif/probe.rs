//! WS-Discovery (2005/04, as ONVIF Core specifies): a SOAP-over-UDP `Probe` for
//! `dn:NetworkVideoTransmitter`, and the device service addresses the answers name.

use std::time::Duration;

use super::auth::nonce;
use super::{DiscoverError, element, elements, unescape};

/// The device service addresses of the ONVIF cameras that answer a WS-Discovery probe
/// sent to `to` (the multicast group, or one address) within `wait`.
pub fn probe(to: std::net::SocketAddr, wait: Duration) -> Result<Vec<String>, DiscoverError> {
    let failed = |reason: String| DiscoverError::Request { operation: "Probe", url: to.to_string(), reason };
    let bind = if to.ip().is_loopback() { "127.0.0.1:0" } else { "0.0.0.0:0" };
    let socket = std::net::UdpSocket::bind(bind).map_err(|e| failed(e.to_string()))?;
    let id: String = nonce().iter().take(16).map(|b| format!("{b:02x}")).collect();
    let message_id = format!("urn:uuid:{}-{}-{}-{}-{}", &id[..8], &id[8..12], &id[12..16], &id[16..20], &id[20..32]);
    let probe = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
         xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
         xmlns:d=\"http://schemas.xmlsoap.org/ws/2005/04/discovery\" \
         xmlns:dn=\"http://www.onvif.org/ver10/network/wsdl\"><s:Header>\
         <a:Action s:mustUnderstand=\"1\">http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action>\
         <a:MessageID>{message_id}</a:MessageID>\
         <a:To s:mustUnderstand=\"1\">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To></s:Header>\
         <s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body></s:Envelope>"
    );
    socket.send_to(probe.as_bytes(), to).map_err(|e| failed(e.to_string()))?;
    let deadline = std::time::Instant::now() + wait;
    let mut found: Vec<String> = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
        socket.set_read_timeout(Some(left)).map_err(|e| failed(e.to_string()))?;
        let Ok((n, _)) = socket.recv_from(&mut buffer) else { break };
        let answer = String::from_utf8_lossy(&buffer[..n]);
        // Only answers to this probe.
        if element(&answer, "RelatesTo").is_none_or(|r| r.trim() != message_id) {
            continue;
        }
        // One device per match: the first of its addresses (a camera may give IPv4 and
        // IPv6 ones).
        for (_, matched) in elements(&answer, "ProbeMatch") {
            let address = element(matched, "XAddrs").and_then(|a| a.split_whitespace().next()).map(unescape);
            if let Some(address) = address.filter(|a| !found.contains(a)) {
                found.push(address);
            }
        }
    }
    Ok(found)
}
