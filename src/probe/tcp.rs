//! Owns the `tcp` probe: a connection that is accepted counts as success.

use super::Failure;

pub(crate) async fn check(addr: &str) -> Result<(), Failure> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| Failure::new(e.kind().to_string(), format!("connect to {addr}: {e}")))
}
