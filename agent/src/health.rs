//! kube-proxy's service health server: on the `healthCheckNodePort` of each
//! Service with externalTrafficPolicy Local, HTTP 200 and the number of this
//! node's ready endpoints when there are some, 503 when there are none, so that
//! a cloud load balancer sends traffic only to nodes that can serve it locally.
//! The answer is kube-proxy's own JSON, so its consumers read ours alike.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::json;
use tracing::warn;
use weir_model::services::HealthCheck;

type Checks = Arc<Mutex<BTreeMap<u16, HealthCheck>>>;

/// The listeners of the current health checks.
#[derive(Default)]
pub struct HealthServer {
    checks: Checks,
    listeners: BTreeMap<u16, Listener>,
}

struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl HealthServer {
    /// Serves `checks` from now on: new ports are opened, ports no longer wanted
    /// closed. A port that cannot be bound is reported and tried again at the next
    /// update.
    pub fn update(&mut self, checks: BTreeMap<u16, HealthCheck>) {
        self.listeners.retain(|port, _| checks.contains_key(port));
        for &port in checks.keys() {
            if self.listeners.contains_key(&port) {
                continue;
            }
            match listen(port, self.checks.clone()) {
                Ok(listener) => {
                    self.listeners.insert(port, listener);
                }
                Err(e) => {
                    warn!(port, error = %e, "cannot serve a healthCheckNodePort; retried at the next sync")
                }
            }
        }
        *self.checks.lock().unwrap_or_else(|p| p.into_inner()) = checks;
    }
}

fn listen(port: u16, checks: Checks) -> std::io::Result<Listener> {
    // `[::]` takes IPv4 too (dual-stack socket); a node without IPv6 binds IPv4.
    let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = crate::supervise::spawn(&format!("weir-health-{port}"), move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => answer(conn, port, &checks),
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    warn!(port, error = %e, "health check connection failed");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    })?;
    Ok(Listener {
        stop,
        thread: Some(thread),
    })
}

/// Whatever the request, the answer for `port`, then the connection is closed.
fn answer(mut conn: TcpStream, port: u16, checks: &Checks) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = [0u8; 1024];
    let _ = conn.read(&mut request);
    let check = checks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&port)
        .cloned();
    let (count, body) = match &check {
        Some(c) => (
            c.local_endpoints,
            json!({
                "service": { "namespace": c.namespace, "name": c.name },
                "localEndpoints": c.local_endpoints,
                "serviceProxyHealthy": true,
            }),
        ),
        None => (0, json!({ "localEndpoints": 0, "serviceProxyHealthy": true })),
    };
    let body = body.to_string();
    let status = if count > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {count}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
}
