//! A blocking rtnetlink handle for the agent's synchronous threads: its own
//! current-thread runtime, so that routes and links are changed in line with
//! the sync loop (which owns no runtime).

use rtnetlink::Handle;
use tokio::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("starting the netlink runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
}

pub struct Netlink {
    rt: Runtime,
    handle: Handle,
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Runtime)?;
        let (conn, handle, _) = {
            let _enter = rt.enter();
            rtnetlink::new_connection().map_err(NetlinkError::Socket)?
        };
        rt.spawn(conn);
        Ok(Self { rt, handle })
    }

    /// Runs one request (`op` names it in the error) to completion.
    pub fn run<T, F>(
        &self,
        op: impl FnOnce() -> String,
        request: impl FnOnce(Handle) -> F,
    ) -> Result<T, NetlinkError>
    where
        F: std::future::Future<Output = Result<T, rtnetlink::Error>>,
    {
        self.rt
            .block_on(request(self.handle.clone()))
            .map_err(|source| NetlinkError::Request { op: op(), source })
    }
}
