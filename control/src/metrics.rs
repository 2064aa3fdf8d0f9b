//! What operators watch: `/metrics` in Prometheus's text format, and `/v1/ready`, which
//! says whether this control plane can serve (its database answers) — for a load
//! balancer's health check. `/v1/health` only says the process is up.
//!
//! `/metrics` answers only requests that carry the scrape token of `--metrics-token-file`
//! (a token for nothing else; an admin's login token does not do, and where a request
//! comes from proves nothing behind a proxy).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;

use crate::refusal::{Kind, Refusal};

/// Counters, from this control plane's start.
#[derive(Default)]
pub struct Metrics {
    /// Answers by status class (index 0 for 1xx … 4 for 5xx).
    responses: [AtomicU64; 5],
    pub dispatches: AtomicU64,
    pub heartbeats: AtomicU64,
    pub enrollments: AtomicU64,
    /// Event streams open now.
    pub event_streams: AtomicI64,
}

/// Holds an event stream counted as open until it ends.
pub struct OpenStream(Arc<App>);

impl OpenStream {
    pub fn new(app: Arc<App>) -> OpenStream {
        app.metrics.event_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(app)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.metrics.event_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts each answer by its status class.
pub async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    app.metrics.responses[class].fetch_add(1, Ordering::Relaxed);
    resp
}

/// `GET /v1/ready`: 200 when the database answers, 503 when it does not.
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.store.user_count().await {
        Ok(_) => Json(proto::api::Readiness { ready: true, error: None }).into_response(),
        Err(e) => {
            let why = format!("the database does not answer: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, Json(proto::api::Readiness { ready: false, error: Some(why) }))
                .into_response()
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, Refusal> {
    let Some(want) = &app.config.metrics_token else {
        return Err(Refusal::new(
            Kind::NotFound,
            "metrics are off: start the control plane with --metrics-token-file FILE, and scrape with that token",
        ));
    };
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
    if !bearer.is_some_and(|got| trust::token::same(want, got)) {
        return Err(Refusal::new(Kind::Unauthorized, "metrics need the scrape token (Authorization: Bearer TOKEN)"));
    }
    let m = &app.metrics;
    let (total, online) = {
        let nodes = app.subscribe_registry();
        let nodes = nodes.borrow();
        (nodes.len(), nodes.iter().filter(|n| n.online).count())
    };
    let database_up = u8::from(app.store.user_count().await.is_ok());
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let version = format!("{{version=\"{}\"}}", proto::VERSION);
    metric("openbox_build_info", "gauge", "This control plane's version.", &[(&version, "1".into())]);
    let classes: Vec<(String, String)> = (0..5)
        .map(|i| (format!("{{class=\"{}xx\"}}", i + 1), m.responses[i].load(Ordering::Relaxed).to_string()))
        .collect();
    let classes: Vec<(&str, String)> = classes.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
    metric("openbox_http_responses_total", "counter", "Answers given, by status class.", &classes);
    let count = |c: &AtomicU64| vec![("", c.load(Ordering::Relaxed).to_string())];
    metric("openbox_dispatches_total", "counter", "Certificates signed for commands.", &count(&m.dispatches));
    metric("openbox_heartbeats_total", "counter", "Node heartbeats taken.", &count(&m.heartbeats));
    metric("openbox_enrollments_total", "counter", "Nodes enrolled.", &count(&m.enrollments));
    let streams = m.event_streams.load(Ordering::Relaxed).to_string();
    metric("openbox_event_streams", "gauge", "Event streams open now.", &[("", streams)]);
    let states = [("{state=\"online\"}", online.to_string()), ("{state=\"offline\"}", (total - online).to_string())];
    metric("openbox_nodes", "gauge", "Nodes in the registry.", &states);
    let latest = app.subscribe_updates().1.to_string();
    metric(
        "openbox_registry_change",
        "gauge",
        "The newest registry change this control plane has read.",
        &[("", latest)],
    );
    metric("openbox_database_up", "gauge", "Whether the database answers.", &[("", database_up.to_string())]);
    if let Some(rss) = resident_bytes() {
        metric("process_resident_memory_bytes", "gauge", "Resident memory.", &[("", rss.to_string())]);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}

/// VmRSS from /proc (Linux; elsewhere the metric is left out).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}
