//! The agent's long-lived threads, supervised.
//!
//! A panic in the sync, conntrack GC, health-check or routing thread would
//! otherwise stop that work silently while the CNI socket kept serving: pods
//! would be wired, but Services, policies and expiries would no longer follow
//! the cluster. A supervised thread's panic is reported to the main thread
//! instead, which ends the agent with an error naming the thread. The DaemonSet
//! restarts it; the datapath (pinned maps and links) keeps forwarding meanwhile
//! and the new agent adopts it, as after any restart.

use std::{
    any::Any,
    fmt,
    panic::{self, AssertUnwindSafe},
    sync::OnceLock,
    thread::JoinHandle,
};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::error;

/// A supervised thread that panicked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub thread: String,
    /// The panic's message.
    pub cause: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread {} panicked: {}", self.thread, self.cause)
    }
}

/// Where failures go: set once by the process that acts on them (the agent's
/// main). Without it (unit tests, `weirctl`), a failure is only logged.
static FAILURES: OnceLock<UnboundedSender<Failure>> = OnceLock::new();

/// The receiving end of every supervised thread's failures.
pub struct Failures(UnboundedReceiver<Failure>);

impl Failures {
    /// Waits for the first failure of any supervised thread.
    pub async fn next(&mut self) -> Failure {
        match self.0.recv().await {
            Some(failure) => failure,
            // The sender lives in a static: the channel never closes.
            None => std::future::pending().await,
        }
    }
}

/// Makes this process the one that hears of failures; `None` if something
/// already did.
pub fn install() -> Option<Failures> {
    let (tx, rx) = unbounded_channel();
    FAILURES.set(tx).ok().map(|()| Failures(rx))
}

/// Spawns `work` on a thread named `name`; a panic in it is a [`Failure`].
pub fn spawn<F>(name: &str, work: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let thread = name.to_owned();
    #[cfg(debug_assertions)]
    let fault = injected_fault(name);
    std::thread::Builder::new().name(thread.clone()).spawn(move || {
        let supervised = move || {
            #[cfg(debug_assertions)]
            if let Some(after) = fault {
                std::thread::sleep(after);
                panic!("fault injected by {FAULT_VAR}");
            }
            work()
        };
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(supervised)) {
            let failure = Failure {
                thread,
                cause: panic_message(payload.as_ref()),
            };
            error!(
                thread = failure.thread,
                cause = failure.cause,
                "supervised thread panicked"
            );
            if let Some(tx) = FAILURES.get() {
                let _ = tx.send(failure);
            }
        }
    })
}

/// Debug builds only (the lab's tests): `WEIR_TEST_PANIC=<thread>@<ms>` makes
/// the supervised thread of that name panic that long after it starts,
/// instead of doing its work: how the tests see a thread's panic end the agent
/// while the datapath keeps forwarding.
#[cfg(debug_assertions)]
const FAULT_VAR: &str = "WEIR_TEST_PANIC";

#[cfg(debug_assertions)]
fn injected_fault(name: &str) -> Option<std::time::Duration> {
    let value = std::env::var(FAULT_VAR).ok()?;
    let (thread, ms) = value.split_once('@')?;
    (thread == name).then(|| std::time::Duration::from_millis(ms.parse().unwrap_or(0)))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_reaches_the_main_thread_with_the_threads_name() {
        let mut failures = install().expect("the first install in this test binary");
        assert!(install().is_none(), "one process hears failures once");
        // A thread that ends normally is no failure.
        spawn("weir-test-ok", || ()).unwrap().join().unwrap();
        spawn("weir-test-sync", || panic!("map handle {} gone", 7))
            .unwrap()
            .join()
            .expect("the supervisor catches the panic: the thread itself ends normally");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let failure = rt.block_on(failures.next());
        assert_eq!(
            failure,
            Failure {
                thread: "weir-test-sync".into(),
                cause: "map handle 7 gone".into(),
            }
        );
        assert_eq!(
            failure.to_string(),
            "thread weir-test-sync panicked: map handle 7 gone"
        );
        assert!(failures.0.try_recv().is_err(), "the normal end reported nothing");
    }
}
