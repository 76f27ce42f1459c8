//! Owns the `grpc` probe: the standard health check, `grpc.health.v1.Health/Check`, for one
//! service. SERVING passes; any other status, a gRPC error or a transport error fails the sample
//! and says which. The channel is kept between samples over our own connector (TCP, then TLS from
//! `tls.rs` when asked), which also times each new connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OnceCell;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{ConnectTimer, Failure, Timing, io_cause};
use crate::model::GrpcSpec;

pub(crate) struct GrpcCheck {
    endpoint: Endpoint,
    connector: Connector,
    service: String,
    /// Made on the first check, inside the runtime (the channel spawns its worker task).
    channel: OnceCell<Channel>,
}

impl GrpcCheck {
    pub(crate) fn new(spec: &GrpcSpec, timeout: Duration) -> Result<GrpcCheck, String> {
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", spec.address))
            .map_err(|e| format!("invalid gRPC address `{}`: {e}", spec.address))?
            .timeout(timeout)
            .connect_timeout(timeout);
        let tls = match &spec.tls {
            None => None,
            Some(t) => {
                let config = super::tls::client_config(t, &[b"h2"])?;
                let host = host_of(&spec.address);
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                        format!("`{host}` cannot be checked against a certificate: {e}")
                    })?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(GrpcCheck {
            endpoint,
            connector: Connector {
                address: spec.address.clone(),
                tls,
                timer: ConnectTimer::default(),
            },
            service: spec.service.clone(),
            channel: OnceCell::new(),
        })
    }

    pub(crate) async fn check(&self) -> (Timing, Result<(), Failure>) {
        let generation = self.connector.timer.begin();
        let channel = self
            .channel
            .get_or_init(|| async {
                self.endpoint
                    .connect_with_connector_lazy(self.connector.clone())
            })
            .await;
        let mut client = HealthClient::new(channel.clone());
        let sent = Instant::now();
        let answer = client
            .check(HealthCheckRequest {
                service: self.service.clone(),
            })
            .await;
        let mut timing = Timing {
            connect: self.connector.timer.connect_time(generation),
            first_byte: None,
        };
        let response = match answer {
            Ok(r) => r.into_inner(),
            Err(status) => return (timing, Err(self.status_failure(&status))),
        };
        // A unary answer arrives whole: the time to it is the time to its first byte.
        timing.first_byte = Some(sent.elapsed());
        let outcome = match ServingStatus::try_from(response.status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(Failure::new(
                other.as_str_name(),
                format!(
                    "health of {} is {}, expected SERVING",
                    self.service_name(),
                    other.as_str_name()
                ),
            )),
            Err(_) => Err(Failure::new(
                format!("status {}", response.status),
                format!(
                    "health of {} is the unknown status {}, expected SERVING",
                    self.service_name(),
                    response.status
                ),
            )),
        };
        (timing, outcome)
    }

    fn service_name(&self) -> String {
        if self.service.is_empty() {
            "the server".to_owned()
        } else {
            format!("service `{}`", self.service)
        }
    }

    /// A failed call: a gRPC status the server sent, or a transport error tonic turned into one.
    fn status_failure(&self, status: &tonic::Status) -> Failure {
        let code = status.code();
        if code == tonic::Code::NotFound {
            return Failure::new(
                "NOT_FOUND",
                format!(
                    "the server does not know {} (gRPC NOT_FOUND)",
                    self.service_name()
                ),
            );
        }
        // The innermost cause of a transport error is the part a person can act on.
        let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
        let mut source = std::error::Error::source(status);
        while let Some(e) = source {
            innermost = Some(e);
            source = e.source();
        }
        let detail = match innermost {
            Some(e) => format!("{}: {e}", status.message()),
            None => status.message().to_owned(),
        };
        let cause = innermost
            .and_then(io_cause)
            .unwrap_or_else(|| format!("gRPC {code:?}"));
        Failure::new(cause, format!("gRPC {code:?}: {detail}"))
    }
}

/// The host part of `host:port` (without the brackets of an IPv6 address).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The `plan` line.
pub(super) fn describe(g: &GrpcSpec) -> String {
    let service = if g.service.is_empty() {
        "the server as a whole".to_owned()
    } else {
        format!("service `{}`", g.service)
    };
    let mut line = format!("gRPC health check of {service} at {}", g.address);
    match &g.tls {
        None => line.push_str(" (plaintext), expect SERVING"),
        Some(t) => {
            line.push_str(" over TLS");
            if let Some(ca) = &t.ca {
                line.push_str(&format!(", trusting only the CA {}", ca.display()));
            }
            if let Some((cert, _)) = &t.client_cert {
                line.push_str(&format!(", client certificate {}", cert.display()));
            }
            line.push_str(", expect SERVING");
            if t.insecure {
                line.push_str(" (INSECURE: the server's certificate is not checked)");
            }
        }
    }
    line
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to the probe's address (whatever the URI says, which is the same) and, with TLS,
/// checks the server's certificate against the address's host.
#[derive(Clone)]
struct Connector {
    address: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    timer: ConnectTimer,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let address = self.address.clone();
        let tls = self.tls.clone();
        Box::pin(self.timer.time(async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(connector.connect(name, tcp).await?),
            };
            Ok::<_, BoxError>(TokioIo::new(io))
        }))
    }
}
