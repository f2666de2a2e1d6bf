//! DEL: idempotent. Succeeds whether or not the container, its namespace or its
//! interface still exist; always frees the addresses; deletes the host veth by its
//! deterministic name (its peer, and the routes through it, go with it), so it
//! needs nothing from the pod's namespace.

use weir_agent_api::{self as agent_api, Request};

use super::ipam;
use crate::{
    Error, naming,
    netlink::Netlink,
    spec::{Env, NetConf},
};

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), Error> {
    let me = ipam::attachment(env);
    // The agent forgets the pod before its addresses go back to the pool: once
    // released, an address may be handed to a new pod at once, and an
    // unregistration arriving after that would tear down the new pod's entry.
    if let Some(socket) = &conf.agent_socket {
        let ips = match ipam::held(env, conf) {
            Ok(Some(ips)) => ips,
            // A delegated IPAM: the addresses the runtime recorded.
            Ok(None) => conf
                .prev_result
                .iter()
                .flat_map(|r| r.ips.iter().map(|ip| ip.address.ip()))
                .collect(),
            Err(_) => Vec::new(),
        };
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
    // Then the addresses: whatever happens to the links, they must come back.
    let released = ipam::del(env, conf, stdin);
    let links = Netlink::current().map_err(Error::from).and_then(|node| {
        node.delete_link(&naming::host_veth(&me))
            .map(|_| ())
            .map_err(Error::from)
    });
    released.map(|_| ()).and(links)
}
