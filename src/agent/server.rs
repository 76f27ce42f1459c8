//! Owns the agent daemon (`faultline agent`): the HTTP API from the contract over TLS, bearer-token
//! checks, the audit log, `/metrics`, and the daemon's life — revert the journal before serving,
//! revert everything on SIGTERM.
//!
//! Every handler is a thin translation onto [`AgentCore`], the same core the embedded agent uses,
//! so journal, leases and recovery behave the same in both.

mod audit;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(super) use self::audit::excerpt;
use self::audit::{Audit, MAX_MESSAGE_CHARS};
use super::envelope::Envelope;
use super::tls::{self, Admission, Peer, Ticket};
use super::{AgentCore, AgentError};
use crate::protocol::{
    ApplyRequest, ErrorBody, Health, OpenRequest, PROTOCOL_VERSION, RenewRequest, RevertCause,
    RevertedAll,
};

/// Requests larger than this are refused (413) before they are parsed.
const MAX_BODY: usize = 64 * 1024;

/// What `faultline agent` was asked to do, validated by the command line.
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) token_file: PathBuf,
    pub(crate) tls_cert: PathBuf,
    pub(crate) tls_key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) state_dir: PathBuf,
    pub(crate) config: Option<PathBuf>,
}

#[derive(Clone)]
struct AppState {
    core: Arc<AgentCore>,
    /// SHA-256 of the token: comparing digests in constant time leaks neither content nor length.
    token_digest: [u8; 32],
    audit: Arc<Audit>,
    admission: Arc<Admission>,
}

/// A short account of what a request did, put on the response for the audit middleware.
#[derive(Clone)]
struct AuditNote(String);

/// Runs the daemon until SIGTERM or SIGINT, then reverts every active fault and returns.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let envelope = match &settings.config {
        Some(path) => Envelope::load(path).map_err(anyhow::Error::msg)?,
        None => Envelope::default(),
    };
    let token = read_token(&settings.token_file).map_err(anyhow::Error::msg)?;
    let tls_config = tls::server_config(
        &settings.tls_cert,
        &settings.tls_key,
        settings.client_ca.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let persistent = envelope.proxies.clone();
    let audit_path = envelope
        .audit_log
        .clone()
        .unwrap_or_else(|| settings.state_dir.join("audit.jsonl"));
    // Recovery comes before the socket is even bound: nothing can be asked of an agent that still
    // holds faults from its previous life.
    let (core, recovery) = AgentCore::open_async(
        settings.state_dir.clone(),
        envelope,
        Some(settings.listen.port()).filter(|p| *p != 0),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let audit = {
        let path = audit_path.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || Audit::start(&path))
                .await?
                .map_err(anyhow::Error::msg)?,
        )
    };
    for line in &recovery.reverted {
        println!("reverted a fault left by an earlier run of this agent: {line}");
        audit.record("agent", "start", 0, &format!("recovered: {line}"));
    }
    for line in &recovery.failed {
        eprintln!("error: a fault left by an earlier run could NOT be reverted: {line}");
        audit.record("agent", "start", 0, &format!("recovery failed: {line}"));
    }
    core.spawn_reaper();
    for opened in crate::proxy::persistent::open_all(&persistent).map_err(anyhow::Error::msg)? {
        println!("persistent {opened}");
        audit.record("agent", "start", 0, &opened);
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {}: {e}", settings.listen))?;
    let admission = Arc::new(Admission::default());
    let state = AppState {
        core: Arc::clone(&core),
        token_digest: Sha256::digest(token.as_bytes()).into(),
        audit: Arc::clone(&audit),
        admission: Arc::clone(&admission),
    };
    println!(
        "faultline agent listening on https://{} (state {}, audit log {}{}{})",
        listener.local_addr().unwrap_or(settings.listen),
        settings.state_dir.display(),
        audit_path.display(),
        if settings.client_ca.is_some() {
            ", client certificates required"
        } else {
            ""
        },
        if core.is_halted() {
            ", HALTED until `faultline resume`"
        } else {
            ""
        },
    );
    tls::serve(listener, tls_config, router(state), admission, shutdown).await;
    println!("shutting down: reverting every active fault");
    let results = tokio::task::spawn_blocking(move || core.close_blocking()).await?;
    let mut failed = 0;
    for result in results {
        match result {
            Ok(r) => {
                println!("reverted {}: {}", r.id, r.detail);
                audit.record(
                    "agent",
                    "shutdown",
                    0,
                    &format!("reverted {}: {}", r.id, r.detail),
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
                audit.record("agent", "shutdown", 0, &format!("revert failed: {e}"));
            }
        }
    }
    // The last lines (and the counts of suppressed refusals) reach the disk before the exit.
    let closing = Arc::clone(&audit);
    tokio::task::spawn_blocking(move || closing.close()).await?;
    if failed > 0 {
        anyhow::bail!(
            "{failed} fault(s) could not be reverted at shutdown; they stay in the journal for the next start"
        );
    }
    Ok(())
}

/// Registers for SIGTERM and SIGINT at once (so a signal that arrives during recovery or start-up
/// is not lost to the default action), and returns the future that completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to read the token file {}: {e}", path.display()))?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        return Err(format!(
            "the token in {} is shorter than 16 characters; `faultline certs` writes a good one",
            path.display()
        ));
    }
    Ok(token)
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/faults", get(list))
        .route("/v1/faults/{id}", put(apply).delete(revert))
        // Run resources (latency proxies): opened here, closed and renewed like faults.
        .route("/v1/resources/{id}", put(open).delete(revert))
        .route("/v1/leases/renew", post(renew))
        .route("/v1/halt", post(halt))
        .route("/v1/resume", post(resume))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Checks the bearer token before anything else runs, and writes every request to the audit log
/// (refused ones up to a share per peer address, the rest counted).
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>();
    let client = peer.map_or_else(|| "unknown".to_owned(), Peer::identity);
    let peer_ip = peer.map(|p| p.addr.ip().to_canonical());
    let request = format!("{} {}", req.method(), req.uri().path());
    let authorized = bearer(req.headers())
        .is_some_and(|t| bool::from(Sha256::digest(t.as_bytes()).ct_eq(&state.token_digest)));
    // The right token takes the connection out of the unauthenticated pool, where a flood from
    // its address could otherwise evict it before the answer is written.
    // The guard marks the connection busy until the answer is made, so it is not closed to make
    // room for another token holder's connection meanwhile.
    let admitted = match req.extensions().get::<Arc<Ticket>>() {
        Some(ticket) if authorized => ticket.authenticate().map(Some),
        _ => Ok(None),
    };
    let too_large = declared_length(req.headers()).filter(|n| *n > MAX_BODY as u64);
    let response = if let Err(e) = &admitted {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "internal", &e.to_string());
        r.extensions_mut()
            .insert(AuditNote(format!("not served: {e}")));
        r
    } else if let (true, Some(length)) = (authorized, too_large) {
        // Refused by its declared length before the body is read, so hyper never sends
        // `100 Continue` and a client that waits for it never sends the body: the answer is
        // always this 413, never a broken pipe.
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            &format!(
                "length limit exceeded: the body has {length} bytes, at most {MAX_BODY} are read"
            ),
        );
        r.extensions_mut().insert(AuditNote(format!(
            "refused: body of {length} bytes (at most {MAX_BODY})"
        )));
        r
    } else if authorized {
        next.run(req).await
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r.extensions_mut().insert(AuditNote(
            "refused: missing or wrong bearer token".to_owned(),
        ));
        r
    };
    let note = response
        .extensions()
        .get::<AuditNote>()
        .map_or("", |n| n.0.as_str());
    let status = response.status().as_u16();
    let written = if authorized {
        state.audit.record(&client, &request, status, note)
    } else {
        // A peer without the token cannot make the log grow faster than its share.
        state
            .audit
            .record_refusal(peer_ip, &client, &request, status, note)
    };
    // The answer leaves after its audit line is written, unless the disk is slow.
    written.wait().await;
    drop(admitted);
    response
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive
/// (RFC 7235), so `bearer` and `BEARER` are the same.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// The `Content-Length` a request declares, if any (an unparsable one is left to hyper).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An error answer. The message is cut to a short, sanitised excerpt: it may quote what a fault
/// read on the host (a file, a tool's output), and none of that may leave the agent in full.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            kind: kind.to_owned(),
            error: excerpt(message, MAX_MESSAGE_CHARS),
        }),
    )
        .into_response()
}

fn reply<T: Serialize>(body: &T, note: String) -> Response {
    let mut r = axum::Json(body).into_response();
    r.extensions_mut().insert(AuditNote(note));
    r
}

fn agent_error(e: &AgentError) -> Response {
    let (status, kind) = match e {
        AgentError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        AgentError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
        AgentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        AgentError::FaultFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "fault_failed"),
        AgentError::RevertFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "revert_failed"),
        AgentError::Internal(_) | AgentError::Unreachable(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    let message = match e {
        AgentError::BadRequest(m)
        | AgentError::Refused(m)
        | AgentError::Conflict(m)
        | AgentError::FaultFailed(m)
        | AgentError::RevertFailed(m)
        | AgentError::Internal(m)
        | AgentError::Unreachable(m) => m.clone(),
    };
    let mut r = error(status, kind, &message);
    r.extensions_mut().insert(AuditNote(format!("failed: {e}")));
    r
}

/// Parses a JSON body strictly (unknown fields are errors) into a 400 that says what is wrong.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        let mut r = error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("invalid request body: {e}"),
        );
        r.extensions_mut()
            .insert(AuditNote(format!("bad request: {e}")));
        Box::new(r)
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Box<Response>> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Box::new(agent_error(&AgentError::Internal(e.to_string()))))
}

async fn health(State(state): State<AppState>) -> Response {
    let body = Health {
        ok: true,
        halted: state.core.is_halted(),
        active: state.core.active().len(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: Some(PROTOCOL_VERSION.to_owned()),
    };
    reply(&body, String::new())
}

async fn list(State(state): State<AppState>) -> Response {
    let active = state.core.active();
    let note = format!("{} active", active.len());
    reply(&active, note)
}

async fn apply(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let req: ApplyRequest = match parse(&body) {
        Ok(req) => req,
        Err(r) => return *r,
    };
    let summary = format!("apply {} `{id}` for run {}", req.spec.kind(), req.run_id);
    let core = Arc::clone(&state.core);
    let result = match blocking(move || core.apply_blocking(&id, &req)).await {
        Ok(result) => result,
        Err(r) => return *r,
    };
    match result {
        Ok(applied) => {
            let note = format!("{summary}: applied to {}", applied.targets.join(", "));
            reply(&applied, note)
        }
        Err(e) => {
            let mut r = agent_error(&e);
            r.extensions_mut()
                .insert(AuditNote(format!("{summary}: {e}")));
            r
        }
    }
}

async fn open(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let req: OpenRequest = match parse(&body) {
        Ok(req) => req,
        Err(r) => return *r,
    };
    let summary = format!(
        "open {} `{id}` for run {}",
        req.resource.describe(),
        req.run_id
    );
    let core = Arc::clone(&state.core);
    let result = match blocking(move || core.open_blocking(&id, &req)).await {
        Ok(result) => result,
        Err(r) => return *r,
    };
    match result {
        Ok(opened) => {
            let note = format!("{summary}: {}", opened.detail);
            reply(&opened, note)
        }
        Err(e) => {
            let mut r = agent_error(&e);
            r.extensions_mut()
                .insert(AuditNote(format!("{summary}: {e}")));
            r
        }
    }
}

async fn revert(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let core = Arc::clone(&state.core);
    let target = id.clone();
    match blocking(move || core.revert_blocking(&target, RevertCause::Requested)).await {
        Ok(Ok(reverted)) => {
            let note = format!("revert `{id}`: {}", reverted.detail);
            reply(&reverted, note)
        }
        Ok(Err(e)) => agent_error(&e),
        Err(r) => *r,
    }
}

async fn renew(State(state): State<AppState>, body: Bytes) -> Response {
    let req: RenewRequest = match parse(&body) {
        Ok(req) => req,
        Err(r) => return *r,
    };
    let renewed = state.core.renew(&req.ids);
    let note = format!(
        "renewed {}, unknown {}",
        renewed.renewed.len(),
        renewed.unknown.len()
    );
    reply(&renewed, note)
}

async fn halt(State(state): State<AppState>) -> Response {
    let core = Arc::clone(&state.core);
    let results = match blocking(move || core.halt_blocking()).await {
        Ok(results) => results,
        Err(r) => return *r,
    };
    let mut all = RevertedAll {
        reverted: Vec::new(),
        failed: Vec::new(),
    };
    for result in results {
        match result {
            Ok(r) => all.reverted.push(r),
            Err(e) => all.failed.push(e.to_string()),
        }
    }
    let note = format!(
        "halted: reverted {}, failed {}",
        all.reverted.len(),
        all.failed.len()
    );
    reply(&all, note)
}

async fn resume(State(state): State<AppState>) -> Response {
    // Clearing the halt removes a file: disk work, off the async threads.
    let core = Arc::clone(&state.core);
    match blocking(move || core.resume()).await {
        Ok(Ok(())) => health(State(state)).await,
        Ok(Err(e)) => agent_error(&AgentError::Internal(e)),
        Err(r) => *r,
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let c = state.core.counters();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "faultline_agent_active_faults",
        "gauge",
        "Faults this agent holds right now.",
        state.core.active().len() as u64,
    );
    metric(
        "faultline_agent_halted",
        "gauge",
        "1 while the agent refuses new faults after `faultline halt`.",
        u64::from(state.core.is_halted()),
    );
    metric(
        "faultline_agent_faults_applied_total",
        "counter",
        "Faults applied.",
        c.applied.load(Ordering::Relaxed),
    );
    metric(
        "faultline_agent_faults_reverted_total",
        "counter",
        "Faults reverted, for any cause.",
        c.reverted.load(Ordering::Relaxed),
    );
    metric(
        "faultline_agent_faults_failed_total",
        "counter",
        "Applies and reverts that failed.",
        c.failed.load(Ordering::Relaxed),
    );
    metric(
        "faultline_agent_faults_refused_total",
        "counter",
        "Faults refused by the halt switch or the safety envelope.",
        c.refused.load(Ordering::Relaxed),
    );
    metric(
        "faultline_agent_lease_expiries_total",
        "counter",
        "Faults reverted because the coordinator stopped renewing their lease.",
        c.lease_expiries.load(Ordering::Relaxed),
    );
    for (name, help, value) in [
        (
            "faultline_agent_journal_record_microseconds_total",
            "Time spent writing journal entries durably before changing the host.",
            &c.journal_record_us,
        ),
        (
            "faultline_agent_journal_remove_microseconds_total",
            "Time spent removing journal entries after undoing their faults.",
            &c.journal_remove_us,
        ),
        (
            "faultline_agent_apply_microseconds_total",
            "Time from an apply starting on its thread to its answer, journal included.",
            &c.apply_us,
        ),
        (
            "faultline_agent_revert_microseconds_total",
            "Time from a revert starting on its thread to its answer, journal included.",
            &c.revert_us,
        ),
    ] {
        metric(name, "counter", help, value.load(Ordering::Relaxed));
    }
    let (unauthenticated, authenticated) = state.admission.counts();
    metric(
        "faultline_agent_connections_unauthenticated",
        "gauge",
        "Open connections that have not yet sent a request with the token.",
        unauthenticated as u64,
    );
    metric(
        "faultline_agent_connections_authenticated",
        "gauge",
        "Open connections that have sent a request with the token.",
        authenticated as u64,
    );
    metric(
        "faultline_agent_connections_evicted_total",
        "counter",
        "Connections closed to make room for newer ones, or new ones closed for want of room (a flood, if it grows).",
        state.admission.evicted(),
    );
    let (full, resumed) = state.admission.handshakes();
    metric(
        "faultline_agent_tls_handshakes_full_total",
        "counter",
        "TLS handshakes completed in full (certificate signed and checked).",
        full,
    );
    metric(
        "faultline_agent_tls_handshakes_resumed_total",
        "counter",
        "TLS handshakes that resumed an earlier session from its ticket.",
        resumed,
    );
    let (dropped, suppressed) = state.audit.figures();
    metric(
        "faultline_agent_audit_lines_dropped_total",
        "counter",
        "Audit lines dropped because the writer fell behind or could not write.",
        dropped,
    );
    metric(
        "faultline_agent_audit_refusals_suppressed_total",
        "counter",
        "Refused (401) requests counted but not logged one by one.",
        suppressed,
    );
    let mut r = ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response();
    r.extensions_mut().insert(AuditNote(String::new()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR  tok"] {
            assert_eq!(bearer(&with_authorization(value)), Some("tok"), "{value}");
        }
        for value in ["Basic tok", "Bearertok", "tok", "Bearer"] {
            assert_eq!(bearer(&with_authorization(value)), None, "{value}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
