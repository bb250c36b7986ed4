//! Logging (tracing, as text or JSON lines) and the HTTP metrics and request spans.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::{field, info_span, warn, Instrument};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::server::AppState;

/// Logs go to stdout for the server; a command whose stdout is its answer (`hub cluster status
/// --json`) logs to stderr (`to_stderr`), so that its output can be piped into other tools.
pub fn init_logging(filter: &str, format: LogFormat, to_stderr: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("invalid log filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let writer = move || -> Box<dyn std::io::Write> { if to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) } };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true).with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<HttpMetrics> {
        let requests = IntCounterVec::new(
            Opts::new("medhub_http_requests_total", "HTTP requests by method, route and status"),
            &["method", "route", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("medhub_http_request_seconds", "HTTP request latency by route"),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(HttpMetrics { requests, seconds })
    }
}

/// A span per request (method, route, tenant once known, status) and the request metrics.
/// Routes are labelled by their pattern (`/api/facilities/{id}`), never by raw path.
pub async fn observe(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let metrics = req.app_data::<web::Data<AppState>>().map(|state| state.http_metrics.clone());
    let span = info_span!("http", %method, path = %req.path(), tenant = field::Empty, status = field::Empty);
    let response = next.call(req).instrument(span.clone()).await;
    let (status, route) = match &response {
        Ok(res) => (res.status().as_u16(), res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned())),
        Err(e) => (e.as_response_error().status_code().as_u16(), "unmatched".to_owned()),
    };
    span.record("status", status);
    if let Some(metrics) = metrics {
        metrics.requests.with_label_values(&[&method, &route, &status.to_string()]).inc();
        metrics.seconds.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
    }
    if status >= 500 {
        warn!(parent: &span, status, route, "request failed");
    }
    response
}
