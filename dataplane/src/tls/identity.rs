//! What a verified client certificate says about the device.

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::access::PeerCert;

/// The identity of the leaf certificate a client presented (already verified by rustls
/// against the CA bundle), or `None` when it presented none.
pub fn peer_cert(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Option<PeerCert> {
    let leaf = certs?.first()?;
    let sha256 = Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut cert = PeerCert {
        common_name: None,
        subject_alt_names: Vec::new(),
        sha256,
    };
    // rustls verified the chain, so a parse failure here is a certificate feature
    // x509-parser does not know; the fingerprint still identifies the device.
    if let Ok((_, parsed)) = X509Certificate::from_der(leaf.as_ref()) {
        cert.common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                let text = match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        Some((*s).to_owned())
                    }
                    GeneralName::IPAddress(bytes) => ip_text(bytes),
                    _ => None,
                };
                cert.subject_alt_names.extend(text);
            }
        }
    }
    Some(cert)
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}
