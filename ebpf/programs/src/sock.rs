//! Services for the node's own processes (the kubelet, an operator's curl):
//! cgroup socket hooks translate at the socket, not per packet. A socket that
//! connects to a frontend (ClusterIP, NodePort, externalIP, LB IP; and
//! `127.0.0.1:nodePort`, as operators habitually test) is connected to a backend
//! instead, and its packets leave with the backend's address: no NAT, no
//! conntrack. An unconnected UDP socket is translated at each send, and its
//! replies are made to come from the frontend at receive; `getpeername` names
//! the frontend too (`SOCK_REV`). The backend is chosen as for a packet:
//! `sessionAffinity: ClientIP` keeps the node (its address is the client) on
//! one backend, Maglev hashes the socket.
//!
//! Every agent of the lab attaches these to the same (root) cgroup: each acts
//! only for sockets of its own node's network namespace (by netns cookie).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    maps::LruHashMap,
    programs::SockAddrContext,
};
use weir_common::{
    Backend, Dir, EVENT_DROP, EVENT_TRANSLATE, IPPROTO_TCP, IPPROTO_UDP, NodeAddrs, Reason, SVC_F_NODEPORT,
    ServiceKey, ServiceValue, SockRevKey, SockRevValue, maps,
};

use crate::{
    lb::{
        frontend::{self, Empty},
        maps::{BACKENDS, NODE},
        select,
    },
    metrics,
    packet::{Family, Flow, V4, V6},
};

bpf_map! {
    static SOCK_REV: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::with_max_entries(maps::SOCK_REV_ENTRIES, 0);
}

/// A socket hook's verdict: let the call proceed.
const ALLOW: i32 = 1;
const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    to_backend::<V4>(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    to_backend::<V6>(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend::<V4>(&ctx, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_backend::<V6>(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_frontend::<V4>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_frontend::<V6>(&ctx)
}

/// `getpeername` on a translated socket names the frontend it dialled.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_peer4(ctx: SockAddrContext) -> i32 {
    from_frontend::<V4>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_peer6(ctx: SockAddrContext) -> i32 {
    from_frontend::<V6>(&ctx)
}

/// How a family's socket address reads and writes (`struct bpf_sock_addr`'s
/// `user_ip4` or `user_ip6`).
trait SockAddr: Family {
    /// The address the call names, in the maps' form; returns the port (BE).
    fn read(ctx: &SockAddrContext, addr: &mut [u8; 16]) -> u16;
    fn write(ctx: &SockAddrContext, addr: &[u8; 16], port: u16);
    fn is_loopback(addr: &[u8; 16]) -> bool;
}

impl SockAddr for V4 {
    #[inline(always)]
    fn read(ctx: &SockAddrContext, addr: &mut [u8; 16]) -> u16 {
        // SAFETY: the context pointer is valid for this run; word loads as the
        // verifier wants them.
        unsafe {
            let sa = ctx.sock_addr;
            addr[..4].copy_from_slice(&(*sa).user_ip4.to_ne_bytes());
            (*sa).user_port as u16
        }
    }

    #[inline(always)]
    fn write(ctx: &SockAddrContext, addr: &[u8; 16], port: u16) {
        // SAFETY: as in `read`; these fields are writable from these hooks.
        unsafe {
            let sa = ctx.sock_addr;
            (*sa).user_ip4 = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
            (*sa).user_port = u32::from(port);
        }
    }

    #[inline(always)]
    fn is_loopback(addr: &[u8; 16]) -> bool {
        addr[0] == 127
    }
}

impl SockAddr for V6 {
    #[inline(always)]
    fn read(ctx: &SockAddrContext, addr: &mut [u8; 16]) -> u16 {
        // SAFETY: as for V4.
        unsafe {
            let sa = ctx.sock_addr;
            for i in 0..4 {
                addr[i * 4..i * 4 + 4].copy_from_slice(&(*sa).user_ip6[i].to_ne_bytes());
            }
            (*sa).user_port as u16
        }
    }

    #[inline(always)]
    fn write(ctx: &SockAddrContext, addr: &[u8; 16], port: u16) {
        // SAFETY: as for V4.
        unsafe {
            let sa = ctx.sock_addr;
            for i in 0..4 {
                (*sa).user_ip6[i] =
                    u32::from_ne_bytes([addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]]);
            }
            (*sa).user_port = u32::from(port);
        }
    }

    #[inline(always)]
    fn is_loopback(addr: &[u8; 16]) -> bool {
        addr[..15].iter().all(|b| *b == 0) && addr[15] == 1
    }
}

/// Whether the socket lives in this node's network namespace.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> Option<&'static NodeAddrs> {
    let node = NODE.get(0)?;
    // SAFETY: valid for this context type.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (node.netns_cookie != 0 && cookie == node.netns_cookie).then_some(node)
}

/// Counts what a hook did to a socket (`weirctl metrics`, direction
/// `socket`): the packets column counts sockets and datagrams, bytes stay 0.
#[inline(always)]
fn count(reason: Reason) {
    metrics::note(0, Dir::Socket, reason);
}

/// Refuses the socket's connect or send to frontend `key` (`errno`), for
/// `reason`, counted and reported.
#[inline(always)]
fn refuse<F: SockAddr>(
    key: &ServiceKey,
    node: &NodeAddrs,
    svc: &ServiceValue,
    reason: Reason,
    errno: i32,
) -> i32 {
    count(reason);
    event::<F>(key, node, EVENT_DROP, reason, svc.rev_nat_id, None);
    // SAFETY: no preconditions.
    unsafe { bpf_set_retval(-errno) };
    0
}

#[inline(always)]
fn to_backend<F: SockAddr>(ctx: &SockAddrContext, datagram_only: bool) -> i32 {
    let Some(node) = ours(ctx) else {
        return ALLOW;
    };
    // SAFETY: valid for this run.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || (datagram_only && proto != IPPROTO_UDP) {
        return ALLOW;
    }
    let mut key = frontend::key::<F>(0, proto);
    key.port = F::read(ctx, &mut key.addr);
    let svc = match frontend::lookup(&key) {
        Some(svc) => svc,
        // `127.0.0.1:nodePort` (`[::1]:nodePort`): the node's own NodePort.
        None if F::is_loopback(&key.addr) => {
            key.addr.copy_from_slice(frontend::node_addr::<F>(node));
            match frontend::lookup(&key) {
                Some(svc) if svc.flags & SVC_F_NODEPORT != 0 => svc,
                _ => return ALLOW,
            }
        }
        None => return ALLOW,
    };
    // The node is inside the cluster.
    let Ok(svc) = frontend::inside(&mut key, svc) else {
        count(Reason::BackendMissing);
        return ALLOW;
    };
    // The socket as a flow, for the backend's choice: from the node's address
    // (the client kube-proxy's `ClientIP` affinity sees for the node's own
    // connections), and, for Maglev's hash, the socket's cookie where its
    // source port would be (not chosen yet at connect).
    // SAFETY: valid for this context type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut flow = Flow::<F>::new();
    F::narrow(frontend::node_addr::<F>(node), &mut flow.saddr);
    F::narrow(&key.addr, &mut flow.daddr);
    flow.sport = (cookie ^ (cookie >> 16) ^ (cookie >> 32) ^ (cookie >> 48)) as u16;
    flow.dport = key.port;
    flow.proto = proto;
    // From the node's address (where the kernel will send from; the socket
    // may yet bind another): admitted when a range holds it (kube-proxy then
    // also admits the node's packets from the LoadBalancer IP itself).
    if !frontend::admits::<F>(&svc, &flow.saddr) {
        return refuse::<F>(&key, node, &svc, Reason::SourceRange, ETIMEDOUT);
    }
    if let Some(empty) = frontend::empty(&svc) {
        // Dropped by kube-proxy, and the caller would time out: here it
        // learns so at once, and the ClusterIP does not leave the node
        // untranslated. Rejected: "connection refused", as kube-proxy's REJECT.
        return match empty {
            Empty::Drop => refuse::<F>(&key, node, &svc, Reason::NoLocalBackend, ETIMEDOUT),
            Empty::Reject => refuse::<F>(&key, node, &svc, Reason::NoBackend, ECONNREFUSED),
        };
    }
    let now = crate::clock::now();
    // SAFETY: valid for this run.
    let Some(backend) = select::backend(&flow, &key, &svc, now)
        .ok()
        .and_then(|id| unsafe { BACKENDS.get(&id) })
    else {
        count(Reason::BackendMissing);
        return ALLOW;
    };
    // Remembered for replies (UDP) and `getpeername` (both).
    {
        let mut rev = SockRevKey {
            family: F::AF,
            ..SockRevKey::default()
        };
        // SAFETY: valid for this context type.
        rev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        rev.addr.copy_from_slice(&backend.addr);
        rev.port = backend.port;
        let mut front = SockRevValue {
            port: key.port,
            ..SockRevValue::default()
        };
        F::read(ctx, &mut front.addr);
        // Best effort: without it, replies show the backend's address.
        let _ = SOCK_REV.insert(&rev, &front, 0);
    }
    // A connected socket is a new flow; an unconnected one's datagrams are not.
    if !datagram_only && crate::events::tracing() {
        event::<F>(
            &key,
            node,
            EVENT_TRANSLATE,
            Reason::Forwarded,
            svc.rev_nat_id,
            Some(backend),
        );
    }
    F::write(ctx, &backend.addr, backend.port);
    count(Reason::Forwarded);
    ALLOW
}

/// An event of a socket call to the frontend `key`: from the node's address
/// (no port yet), rejected or connected to `backend` instead.
#[inline(always)]
fn event<F: SockAddr>(
    key: &ServiceKey,
    node: &NodeAddrs,
    kind: u8,
    reason: Reason,
    rev_nat_id: u32,
    backend: Option<&Backend>,
) {
    let Some(mut entry) = crate::events::reserve(kind, Dir::Socket, reason, 0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved entry is ours until submitted.
    unsafe {
        (*e).saddr = *frontend::node_addr::<F>(node);
        (*e).daddr = key.addr;
        (*e).dport = key.port;
        (*e).proto = key.proto;
        (*e).family = F::AF;
        (*e).rev_nat_id = rev_nat_id;
        if let Some(b) = backend {
            (*e).nat_addr = b.addr;
            (*e).nat_port = b.port;
        }
    }
    entry.submit(0);
}

/// A datagram received on a socket we translated at send: from the frontend.
#[inline(always)]
fn from_frontend<F: SockAddr>(ctx: &SockAddrContext) -> i32 {
    if ours(ctx).is_none() {
        return ALLOW;
    }
    let mut rev = SockRevKey {
        family: F::AF,
        ..SockRevKey::default()
    };
    // SAFETY: valid for this context type.
    rev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    rev.port = F::read(ctx, &mut rev.addr);
    // SAFETY: valid for this run.
    if let Some(front) = unsafe { SOCK_REV.get(&rev) } {
        F::write(ctx, &front.addr, front.port);
        count(Reason::Forwarded);
    }
    ALLOW
}
