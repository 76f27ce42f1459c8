//! Owns the coordinator's web server (`listen` in `[coordinator]`): the dashboard pages
//! (`html.rs`), the JSON API under `/api/v1/` with the actions (`api.rs`) and `/metrics`
//! (`metrics.rs`). It reads the dispatcher's state only through the `watch` snapshot the
//! dispatcher publishes and the history; it changes nothing itself: an action is a `Command` sent
//! to the dispatcher, which executes it and answers.
//!
//! Plain HTTP: bind it to loopback or put it behind a TLS proxy. Reading needs no token unless
//! `dashboard_token = true`; actions always need the bearer token of `token_file`, compared in
//! constant time, and every action (accepted or refused) is a log line naming it and the client.

mod api;
mod html;
mod metrics;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::{mpsc, oneshot, watch};

use crate::gameday::GameDay;
use crate::history::History;
use crate::schedule::Calendar;

/// What the dispatcher shows of itself, published after every change it makes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Per schedule, in file order.
    pub(crate) schedules: Vec<ScheduleState>,
    /// Fires started and not ended, oldest first.
    pub(crate) fires: Vec<FireState>,
    /// Whether this coordinator fires (always on SQLite; the lead holder on PostgreSQL).
    pub(crate) leading: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct ScheduleState {
    /// When its next slot is due, skipped or not (None: no slot left).
    pub(crate) next_slot: Option<Timestamp>,
    /// Suspended, by the file or by a runtime `suspend` (`resume` overrides the file).
    pub(crate) suspended: bool,
    /// Whether a runtime action (not the file) decided `suspended`.
    pub(crate) overridden: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct FireState {
    pub(crate) schedule: String,
    pub(crate) at: Timestamp,
    pub(crate) phase: FirePhase,
    /// The run under way (the last one the fire started).
    pub(crate) run: Option<String>,
    /// Where that run stands, read live (before, during, after).
    pub(crate) stage: Option<crate::progress::Stage>,
}

impl FireState {
    /// The run's own phase (before, during, after) while one runs; else where the fire stands.
    pub(crate) fn phase_name(&self) -> &'static str {
        match (
            self.phase,
            self.stage.as_ref().and_then(crate::progress::Stage::get),
        ) {
            (FirePhase::Running, Some(stage)) => stage,
            (phase, _) => phase.as_str(),
        }
    }
}

/// Where a fire stands, as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirePhase {
    /// Jitter, loading the experiments, the outage and halted-agent checks.
    Starting,
    /// Waiting for a run on the same host(s) to end (`on_conflict = "queue"`).
    Queued,
    /// An experiment of the fire is running.
    Running,
}

impl FirePhase {
    pub(crate) const ALL: [FirePhase; 3] =
        [FirePhase::Starting, FirePhase::Queued, FirePhase::Running];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FirePhase::Starting => "starting",
            FirePhase::Queued => "queued",
            FirePhase::Running => "running",
        }
    }
}

/// An action on a schedule, executed by the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Fire now (a slot at the present instant), under the schedule's usual checks.
    RunNow,
    /// Skip its slots until `resume` or a restart.
    Suspend,
    /// Fire its slots again, even when the file says `suspend = true`, until a restart.
    Resume,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::RunNow => "run",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
        }
    }
}

/// What the dispatcher said to an action: what it did, or why it did nothing.
pub(crate) type Outcome = Result<String, ActionError>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    #[error("no schedule named `{0}`")]
    NoSchedule(String),
    #[error("{0}")]
    Refused(String),
}

pub(crate) struct Command {
    pub(crate) schedule: String,
    pub(crate) action: Action,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// What every handler reads.
struct Web {
    gameday: GameDay,
    /// The file's calendar with every `suspend` cleared: a schedule's suspension comes from the
    /// snapshot (file or runtime), its other skip reasons from here.
    unsuspended: Calendar,
    history: History,
    snapshot: watch::Receiver<Snapshot>,
    actions: mpsc::Sender<Command>,
    /// SHA-256 of the token, so comparing takes the same time whatever the length guessed.
    token: Option<[u8; 32]>,
    read_needs_token: bool,
}

type Shared = Arc<Web>;

/// A bound web server, not yet serving: binding happens before the dispatcher starts, so a port
/// in use stops the coordinator at once with the address in the message.
pub(crate) struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
}

impl Server {
    pub(crate) async fn bind(
        gameday: &GameDay,
        history: History,
        snapshot: watch::Receiver<Snapshot>,
        actions: mpsc::Sender<Command>,
    ) -> anyhow::Result<Option<Server>> {
        let Some(cfg) = &gameday.coordinator.web else {
            return Ok(None);
        };
        let token = match &cfg.token_file {
            None => None,
            Some(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .with_context(|| format!("failed to read the token file {}", path.display()))?;
                let token = text.trim();
                anyhow::ensure!(
                    token.len() >= 16,
                    "the token in {} is too short ({} characters, at least 16)",
                    path.display(),
                    token.len()
                );
                Some(Sha256::digest(token.as_bytes()).into())
            }
        };
        let mut unsuspended = gameday.calendar.clone();
        for s in &mut unsuspended.schedules {
            s.suspend = false;
        }
        let shared = Arc::new(Web {
            gameday: gameday.clone(),
            unsuspended,
            history,
            snapshot,
            actions,
            token,
            read_needs_token: cfg.dashboard_token,
        });
        let reading = Router::new()
            .route("/", get(html::index))
            .route("/runs/{id}", get(html::run))
            .route("/experiments/{title}", get(html::experiment))
            .route("/api/v1/schedules", get(api::schedules))
            .route("/api/v1/runs", get(api::runs))
            .route("/api/v1/runs/{id}", get(api::run))
            .route("/metrics", get(metrics::metrics))
            .route_layer(middleware::from_fn_with_state(shared.clone(), read_gate));
        let app = Router::new()
            .route("/api/v1/schedules/{name}/run", post(api::run_now))
            .route("/api/v1/schedules/{name}/suspend", post(api::suspend))
            .route("/api/v1/schedules/{name}/resume", post(api::resume))
            .merge(reading)
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("failed to listen on {}", cfg.listen))?;
        Ok(Some(Server { listener, app }))
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until the task is aborted (when the dispatcher has stopped).
    pub(crate) async fn serve(self) {
        let app = self.app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(self.listener, app).await {
            crate::coordinator::log(&format!("the web server stopped: {e}"));
        }
    }
}

/// Whether the request carries the bearer token; false when none is configured.
fn authorized(web: &Web, headers: &HeaderMap) -> bool {
    let Some(expected) = &web.token else {
        return false;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    digest.ct_eq(expected).into()
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        format!("{message}\n"),
    )
        .into_response()
}

async fn read_gate(State(web): State<Shared>, request: Request, next: Next) -> Response {
    if web.read_needs_token && !authorized(&web, request.headers()) {
        return unauthorized("reading needs the bearer token (dashboard_token = true)");
    }
    next.run(request).await
}

/// Checks the token, sends the action to the dispatcher and logs both the request and its
/// outcome with the client's address.
async fn act(
    web: &Web,
    client: SocketAddr,
    headers: &HeaderMap,
    schedule: String,
    action: Action,
) -> Response {
    let what = format!(
        "api: `{}` of schedule `{schedule}` by {client}",
        action.as_str()
    );
    if web.token.is_none() {
        crate::coordinator::log(&format!("{what}: refused (no token_file configured)"));
        return (
            StatusCode::FORBIDDEN,
            "actions are disabled: `[coordinator]` has no token_file\n",
        )
            .into_response();
    }
    if !authorized(web, headers) {
        crate::coordinator::log(&format!("{what}: refused (missing or wrong bearer token)"));
        return unauthorized("actions need the bearer token of token_file");
    }
    let (reply, answer) = oneshot::channel();
    let sent = web
        .actions
        .send(Command {
            schedule,
            action,
            reply,
        })
        .await;
    let outcome = match sent {
        Ok(()) => answer.await.ok(),
        Err(_) => None,
    };
    let (status, body) = match outcome {
        Some(Ok(done)) => (
            StatusCode::OK,
            serde_json::json!({ "ok": true, "message": done }),
        ),
        Some(Err(ActionError::NoSchedule(name))) => (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "ok": false, "message": format!("no schedule named `{name}`") }),
        ),
        Some(Err(ActionError::Refused(why))) => (
            StatusCode::CONFLICT,
            serde_json::json!({ "ok": false, "message": why }),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ok": false, "message": "the coordinator is stopping" }),
        ),
    };
    crate::coordinator::log(&format!(
        "{what}: {} {}",
        status.as_u16(),
        body["message"].as_str().unwrap_or_default()
    ));
    (status, axum::Json(body)).into_response()
}

/// Client addresses for the audit lines.
type Client = ConnectInfo<SocketAddr>;

/// A schedule's next slots up to its next fire (at most `limit`), each with why it is skipped.
fn next_slots(web: &Web, snap: &Snapshot, i: usize, limit: usize) -> Vec<(Timestamp, String)> {
    let Some(state) = snap.schedules.get(i) else {
        return Vec::new();
    };
    let Some(first) = state.next_slot else {
        return Vec::new();
    };
    let after = first
        .checked_sub(jiff::SignedDuration::from_nanos(1))
        .unwrap_or(first);
    let mut out = Vec::new();
    for slot in web.unsuspended.slots(i, after, limit) {
        let why = if state.suspended {
            Some(if state.overridden {
                "suspended (at runtime, through the API)".to_owned()
            } else {
                "suspended (suspend = true in the file)".to_owned()
            })
        } else {
            slot.skipped.map(|r| r.to_string())
        };
        let fires = why.is_none();
        out.push((slot.at, why.unwrap_or_default()));
        if fires {
            break;
        }
    }
    out
}

/// The `Timestamp` as the schedule's local time and as UTC.
fn local_and_utc(web: &Web, i: usize, at: Timestamp) -> (String, String) {
    let s = &web.gameday.calendar.schedules[i];
    (
        format!(
            "{} {}",
            at.to_zoned(s.zone.clone()).strftime("%Y-%m-%d %H:%M:%S%:z"),
            s.zone_name
        ),
        format!("{at:.0}"),
    )
}
