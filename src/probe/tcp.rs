//! Owns the `tcp` probe: a connection that is accepted counts as success.

pub(crate) async fn check(addr: &str) -> Result<(), String> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| format!("connect to {addr}: {e}"))
}
