//! The agent's HTTP endpoints, plain HTTP/1.1 on tasks of the agent's runtime:
//!
//! - metrics (`--metrics-address`): `/metrics`, Prometheus text format;
//! - health (`--health-address`): `/healthz` (alive) and `/readyz` (ready,
//!   with every reason it is not), as the DaemonSet's probes ask, and
//!   `/statusz` (who the agent is and its sync state, JSON: `weirctl status`);
//! - kube-proxy's health contract (`--kube-proxy-healthz-address`, `:10256`):
//!   `/healthz` with `lastUpdated`/`currentTime`, 503 when stale, as cloud load
//!   balancers probe it.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tracing::{info, warn};

use crate::{metrics::Metrics, status::Status};

/// An answer: status, content type, body.
pub type Answer = (StatusCode, &'static str, String);

/// What one address serves.
#[derive(Clone)]
pub enum Endpoints {
    Metrics(Arc<Metrics>),
    Health(Status),
    KubeProxy(Status),
}

impl Endpoints {
    fn name(&self) -> &'static str {
        match self {
            Self::Metrics(_) => "metrics (/metrics)",
            Self::Health(_) => "health (/healthz, /readyz, /statusz)",
            Self::KubeProxy(_) => "kube-proxy health (/healthz)",
        }
    }

    /// The answer to `GET path`.
    pub fn answer(&self, path: &str) -> Answer {
        const TEXT: &str = "text/plain; charset=utf-8";
        const JSON: &str = "application/json";
        let not_found = (StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned());
        match (self, path) {
            (Self::Metrics(m), "/metrics") => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m.render(),
            ),
            (Self::Health(s), "/healthz" | "/livez") => match s.alive() {
                Ok(()) => (StatusCode::OK, TEXT, "ok\n".into()),
                Err(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            },
            (Self::Health(s), "/statusz") => (StatusCode::OK, JSON, s.report().to_string()),
            (Self::Health(s), "/readyz") => match s.ready() {
                Ok(()) => (StatusCode::OK, TEXT, "ok\n".into()),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("{}\n", why.join("\n")),
                ),
            },
            (Self::KubeProxy(s), "/healthz") => {
                let (healthy, body) = s.kube_proxy();
                let code = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, JSON, body.to_string())
            }
            (Self::KubeProxy(s), "/livez") => {
                let alive = s.alive().is_ok();
                let code = if alive {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, JSON, json!({ "alive": alive }).to_string())
            }
            _ => not_found,
        }
    }
}

/// Binds `addr` and serves `endpoints` until the process ends. A port taken
/// (a kube-proxy still running binds 10256 until it is removed) is retried
/// every [`REBIND`], said once.
pub async fn serve(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<()> {
    let mut said = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if !std::mem::replace(&mut said, true) {
                    warn!(%addr, "the port of {} is taken: retrying every {REBIND:?}", endpoints.name());
                }
                tokio::time::sleep(REBIND).await;
            }
            Err(e) => return Err(e),
        }
    };
    info!(%addr, "serving {}", endpoints.name());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accept on {}", endpoints.name());
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, endpoints.clone()));
            // A client that goes away mid-request is not worth a log line.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// How often a taken port is tried again.
const REBIND: std::time::Duration = std::time::Duration::from_secs(10);

async fn respond(req: Request<Incoming>, endpoints: Endpoints) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = if req.method() == Method::GET {
        endpoints.answer(req.uri().path())
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Spawns [`serve`] on the current runtime; a failure (no such address) is
/// logged, and the agent goes on.
pub fn spawn(addr: Option<SocketAddr>, endpoints: Endpoints) {
    let Some(addr) = addr else { return };
    tokio::spawn(async move {
        let name = endpoints.name();
        if let Err(e) = serve(addr, endpoints).await {
            tracing::error!(%addr, error = %e, "the {name} endpoint is not served");
        }
    });
}
