//! What the agent says about itself: alive (`/healthz`), ready (`/readyz`),
//! and kube-proxy's health contract (`:10256/healthz`), from one record the
//! agent's threads update.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};

/// The sync loop is dead when it has not come round for this long (it comes
/// round at least every 5 s).
const LOOP_DEAD_AFTER: Duration = Duration::from_secs(30);
/// kube-proxy's contract: unhealthy once a change has waited this long for its
/// sync (kube-proxy uses twice its sync period, 60 s by default).
const STALE_AFTER: Duration = Duration::from_secs(60);

/// The state of the CNI configuration the agent writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Conflist {
    /// The agent writes none (`--cni-conf-file off`).
    #[default]
    NotWritten,
    /// Not yet: why.
    Waiting(String),
    Written,
    /// It will not be: why (another's file in the way, an I/O error).
    Refused(String),
}

#[derive(Debug, Default)]
struct Inner {
    heartbeat: Option<Instant>,
    /// Kinds not listed whole yet, and kinds failing (with why).
    unlisted: Vec<String>,
    failing: Vec<String>,
    services_synced: bool,
    policy_synced: bool,
    last_service_sync: Option<SystemTime>,
    /// When the oldest change not yet written to the maps arrived.
    pending_since: Option<Instant>,
    cni_serving: bool,
    conflist: Conflist,
    /// A problem with this node's Node object (no pod CIDRs, not found).
    node: Option<String>,
    /// Its zone label, which endpoints' zone hints are compared with (`""`:
    /// none).
    zone: String,
    /// Who the agent is: its node, its source (`kube`, `dir:PATH`, none).
    node_name: String,
    source: Option<String>,
    started: Option<SystemTime>,
}

/// Shared by the agent's threads.
#[derive(Clone, Debug, Default)]
pub struct Status(Arc<Mutex<Inner>>);

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Who the agent is, for `/statusz`.
    pub fn identify(&self, node_name: &str, source: Option<String>) {
        self.with(|s| {
            s.node_name = node_name.to_owned();
            s.source = source;
            s.started = Some(SystemTime::now());
        });
    }

    /// `/statusz`: everything above as one JSON object, for `weirctl status`.
    pub fn report(&self) -> Value {
        let alive = self.alive();
        let ready = self.ready();
        self.with(|s| {
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "object": crate::datapath::object::digest(),
                "node": s.node_name,
                "zone": (!s.zone.is_empty()).then_some(&s.zone),
                "source": s.source,
                "started": s.started.map(humantime),
                "alive": alive.is_ok(),
                "ready": ready.is_ok(),
                "not_ready": ready.err().unwrap_or_default(),
                "services_synced": s.services_synced,
                "policy_synced": s.policy_synced,
                "last_service_sync": s.last_service_sync.map(humantime),
                "unlisted": s.unlisted,
                "failing": s.failing,
            })
        })
    }

    /// The sync loop came round.
    pub fn heartbeat(&self) {
        self.with(|s| s.heartbeat = Some(Instant::now()));
    }

    /// What the source has not listed whole yet, and what fails.
    pub fn source(&self, unlisted: Vec<String>, failing: Vec<String>) {
        self.with(|s| {
            s.unlisted = unlisted;
            s.failing = failing;
        });
    }

    /// A change arrived (the oldest pending one sets the clock).
    pub fn change_pending(&self) {
        self.with(|s| {
            s.pending_since.get_or_insert_with(Instant::now);
        });
    }

    /// The service maps hold every change received so far.
    pub fn services_synced(&self) {
        self.with(|s| {
            s.services_synced = true;
            s.last_service_sync = Some(SystemTime::now());
            s.pending_since = None;
        });
    }

    pub fn policy_synced(&self) {
        self.with(|s| s.policy_synced = true);
    }

    pub fn cni_serving(&self) {
        self.with(|s| s.cni_serving = true);
    }

    pub fn is_cni_serving(&self) -> bool {
        self.with(|s| s.cni_serving)
    }

    pub fn conflist(&self, c: Conflist) {
        self.with(|s| s.conflist = c);
    }

    pub fn conflist_state(&self) -> Conflist {
        self.with(|s| s.conflist.clone())
    }

    pub fn node_problem(&self, problem: Option<String>) {
        self.with(|s| s.node = problem);
    }

    /// The node's zone, as the service compiler has it.
    pub fn zone(&self, zone: &str) {
        self.with(|s| s.zone = zone.to_owned());
    }

    /// `/healthz`: the datapath is loaded (the agent would not serve otherwise)
    /// and the sync loop is alive.
    pub fn alive(&self) -> Result<(), String> {
        self.with(|s| match s.heartbeat {
            Some(t) if t.elapsed() < LOOP_DEAD_AFTER => Ok(()),
            Some(t) => Err(format!("the sync loop has not come round for {:?}", t.elapsed())),
            None => Ok(()), // starting: not dead yet
        })
    }

    /// `/readyz`: every kind listed whole and none failing, the maps synced,
    /// the CNI socket served, the CNI configuration written (when the agent
    /// writes one), this node's Node object usable. Every reason it is not.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        self.with(|s| {
            let mut not = Vec::new();
            not.extend(s.unlisted.iter().map(|k| format!("{k} not listed yet")));
            not.extend(s.failing.iter().cloned());
            if !s.services_synced {
                not.push("services not synced yet".into());
            }
            if !s.policy_synced {
                not.push("policies not synced yet".into());
            }
            if !s.cni_serving {
                not.push("the CNI socket is not served yet".into());
            }
            match &s.conflist {
                Conflist::NotWritten | Conflist::Written => {}
                Conflist::Waiting(why) => not.push(format!("CNI configuration not written: {why}")),
                Conflist::Refused(why) => not.push(format!("CNI configuration refused: {why}")),
            }
            not.extend(s.node.clone());
            if not.is_empty() { Ok(()) } else { Err(not) }
        })
    }

    /// kube-proxy's `/healthz`: 200 when no change has waited over a minute for
    /// its sync (and the sync loop lives), else 503; the body says when the
    /// maps were last brought up to date.
    pub fn kube_proxy(&self) -> (bool, Value) {
        let alive = self.alive().is_ok();
        self.with(|s| {
            let stale = s.pending_since.is_some_and(|t| t.elapsed() > STALE_AFTER);
            let healthy = alive && !stale && s.services_synced;
            let time = |t: SystemTime| humantime(t);
            (
                healthy,
                json!({
                    "lastUpdated": s.last_service_sync.map_or_else(String::new, time),
                    "currentTime": time(SystemTime::now()),
                    "nodeEligible": true,
                }),
            )
        })
    }
}

/// RFC 3339 in UTC, as Go's `time.Time` marshals.
fn humantime(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t).map_or_else(|_| String::new(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_350_000) + Duration::from_nanos(5);
        assert_eq!(humantime(t), "2026-12-04T02:06:40.000000005Z");
        assert_eq!(humantime(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn ready_lists_every_reason_and_kube_proxy_goes_stale() {
        let s = Status::default();
        let Err(not) = s.ready() else {
            panic!("ready before any sync")
        };
        assert!(not.iter().any(|r| r.contains("services")) && not.iter().any(|r| r.contains("CNI socket")));
        s.source(vec![], vec!["Service: forbidden".into()]);
        s.services_synced();
        s.policy_synced();
        s.cni_serving();
        assert_eq!(s.ready(), Err(vec!["Service: forbidden".to_string()]));
        s.source(vec![], vec![]);
        assert_eq!(s.ready(), Ok(()));
        assert!(s.kube_proxy().0);
        s.with(|i| i.pending_since = Some(Instant::now() - STALE_AFTER - Duration::from_secs(1)));
        assert!(!s.kube_proxy().0);
    }
}
