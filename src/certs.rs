//! Owns `faultline certs`: a private CA, an agent certificate for the given host names and
//! addresses, a client certificate for mutual TLS, and a random bearer token — so a first-time
//! user needs no openssl.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Certificates are valid for this long. Long enough that a game day never meets an expired
/// certificate (chaos-mesh#4423), short enough that a leaked key does not live forever.
const VALID_DAYS: i64 = 3650;

/// What `faultline certs` wrote.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) hosts: Vec<String>,
}

/// Writes `ca.pem`, `ca-key.pem`, `agent.pem`, `agent-key.pem`, `client.pem`, `client-key.pem`
/// and `token` into `out`. Refuses to overwrite existing files: a second run must not silently
/// invalidate the certificates a fleet already uses.
pub(crate) fn generate(out: &Path, hosts: &[String]) -> Result<Written, String> {
    let hosts: Vec<String> = if hosts.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        hosts.to_vec()
    };
    std::fs::create_dir_all(out).map_err(|e| format!("failed to create {}: {e}", out.display()))?;
    let names = [
        "ca.pem",
        "ca-key.pem",
        "agent.pem",
        "agent-key.pem",
        "client.pem",
        "client-key.pem",
        "token",
    ];
    if let Some(existing) = names.iter().map(|n| out.join(n)).find(|p| p.exists()) {
        return Err(format!(
            "{} already exists; remove the old files or choose another --out",
            existing.display()
        ));
    }
    let fail = |what: &str, e: rcgen::Error| format!("failed to generate the {what}: {e}");
    let now = time::OffsetDateTime::now_utc();
    let validity = |p: &mut CertificateParams| {
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(VALID_DAYS);
    };

    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "faultline agents CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| fail("CA certificate", e))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let agent_key = KeyPair::generate().map_err(|e| fail("agent key", e))?;
    let mut agent_params = CertificateParams::new(hosts.clone())
        .map_err(|e| format!("invalid --host among {hosts:?}: {e}"))?;
    agent_params
        .distinguished_name
        .push(DnType::CommonName, "faultline agent");
    agent_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut agent_params);
    let agent_cert = agent_params
        .signed_by(&agent_key, &issuer)
        .map_err(|e| fail("agent certificate", e))?;

    let client_key = KeyPair::generate().map_err(|e| fail("client key", e))?;
    let mut client_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("client", e))?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "faultline coordinator");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client_params);
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .map_err(|e| fail("client certificate", e))?;

    let token = hex(&rand::random::<[u8; 32]>());
    let files = [
        ("ca.pem", ca_cert.pem(), 0o644),
        ("ca-key.pem", ca_key.serialize_pem(), 0o600),
        ("agent.pem", agent_cert.pem(), 0o644),
        ("agent-key.pem", agent_key.serialize_pem(), 0o600),
        ("client.pem", client_cert.pem(), 0o644),
        ("client-key.pem", client_key.serialize_pem(), 0o600),
        ("token", format!("{token}\n"), 0o600),
    ];
    let mut written = Vec::new();
    for (name, body, mode) in files {
        let path = out.join(name);
        write_new(&path, body.as_bytes(), mode)?;
        written.push(path);
    }
    Ok(Written {
        files: written,
        hosts,
    })
}

/// Creates a file that must not exist yet, with its final mode from the first byte on, so a key
/// is never readable by others even for a moment.
fn write_new(path: &Path, body: &[u8], mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("failed to create {}: {e}", path.display()))?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("failed to write {}: {e}", path.display()))
}

/// Lowercase hex of some bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
