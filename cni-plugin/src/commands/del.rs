//! DEL: idempotent. Succeeds whether or not the container, its namespace or its
//! interface still exist; always frees the addresses; deletes the host veth by its
//! deterministic name (its peer, and the routes through it, go with it), so it
//! needs nothing from the pod's namespace.

use super::ipam;
use crate::{
    Error,
    agent_api::{self, Request},
    naming,
    netlink::Netlink,
    spec::{Env, NetConf},
};

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), Error> {
    let me = ipam::attachment(env);
    // Addresses first: whatever happens to the links, they must come back.
    let released = ipam::del(env, conf, stdin);
    if let Some(socket) = &conf.agent_socket {
        let ips = released.as_ref().map(Vec::clone).unwrap_or_default();
        let request = Request::Del {
            container_id: me.container_id.clone(),
            ifname: me.ifname.clone(),
            ips,
        };
        // The agent forgets stale endpoints by itself; a DEL that failed here would
        // only make the runtime retry forever.
        if let Err(e) = agent_api::call(socket, &request) {
            eprintln!("weir-cni: DEL {}/{}: {e}", me.container_id, me.ifname);
        }
    }
    let links = Netlink::current().map_err(Error::from).and_then(|node| {
        node.delete_link(&naming::host_veth(&me))
            .map(|_| ())
            .map_err(Error::from)
    });
    released.and(links)
}
