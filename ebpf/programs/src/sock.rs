//! Services for the node's own processes (the kubelet, an operator's curl):
//! cgroup socket hooks translate at the socket, not per packet. A socket that
//! connects to a frontend (ClusterIP, NodePort, externalIP, LB IP; and
//! `127.0.0.1:nodePort`, as operators habitually test) is connected to a backend
//! instead, and its packets leave with the backend's address: no NAT, no
//! conntrack. An unconnected UDP socket is translated at each send, and its
//! replies are made to come from the frontend at receive; `getpeername` names
//! the frontend too (`SOCK_REV`).
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
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_DROP_EMPTY,
    SVC_F_NODEPORT, SVC_F_TWO_SCOPES, ServiceKey, SockRevKey, SockRevValue, maps,
};

use crate::lb::{
    maps::{BACKENDS, NODE, SERVICES},
    select,
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
    to_backend(&ctx, AF_INET, false)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, AF_INET6, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, AF_INET, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx, AF_INET6, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_frontend(&ctx, AF_INET)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_frontend(&ctx, AF_INET6)
}

/// `getpeername` on a translated socket names the frontend it dialled.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_peer4(ctx: SockAddrContext) -> i32 {
    from_frontend(&ctx, AF_INET)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_peer6(ctx: SockAddrContext) -> i32 {
    from_frontend(&ctx, AF_INET6)
}

/// The socket address the call names, in the maps' form: (address, port BE).
#[inline(always)]
fn read(ctx: &SockAddrContext, family: u8, addr: &mut [u8; 16]) -> u16 {
    // SAFETY: the context pointer is valid for this run; word loads as the
    // verifier wants them.
    unsafe {
        let sa = ctx.sock_addr;
        if family == AF_INET {
            addr[..4].copy_from_slice(&(*sa).user_ip4.to_ne_bytes());
        } else {
            for i in 0..4 {
                addr[i * 4..i * 4 + 4].copy_from_slice(&(*sa).user_ip6[i].to_ne_bytes());
            }
        }
        (*sa).user_port as u16
    }
}

#[inline(always)]
fn write(ctx: &SockAddrContext, family: u8, addr: &[u8; 16], port: u16) {
    // SAFETY: as in `read`; these fields are writable from these hooks.
    unsafe {
        let sa = ctx.sock_addr;
        if family == AF_INET {
            (*sa).user_ip4 = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        } else {
            for i in 0..4 {
                (*sa).user_ip6[i] =
                    u32::from_ne_bytes([addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]]);
            }
        }
        (*sa).user_port = u32::from(port);
    }
}

/// Whether the socket lives in this node's network namespace.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> Option<&'static weir_common::NodeAddrs> {
    let node = NODE.get(0)?;
    // SAFETY: valid for this context type.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (node.netns_cookie != 0 && cookie == node.netns_cookie).then_some(node)
}

#[inline(always)]
fn to_backend(ctx: &SockAddrContext, family: u8, datagram_only: bool) -> i32 {
    let Some(node) = ours(ctx) else {
        return ALLOW;
    };
    // SAFETY: valid for this run.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || (datagram_only && proto != IPPROTO_UDP) {
        return ALLOW;
    }
    let mut key = ServiceKey {
        port: 0,
        slot: 0,
        proto,
        family,
        scope: SCOPE_EXTERNAL,
        ..ServiceKey::default()
    };
    key.port = read(ctx, family, &mut key.addr);
    // SAFETY: valid for this run.
    let mut svc = match unsafe { SERVICES.get(&key) } {
        Some(svc) => *svc,
        None => {
            // `127.0.0.1:nodePort` (`[::1]:nodePort`): the node's own NodePort.
            if !is_loopback(family, &key.addr) {
                return ALLOW;
            }
            key.addr
                .copy_from_slice(if family == AF_INET { &node.v4 } else { &node.v6 });
            // SAFETY: valid for this run.
            match unsafe { SERVICES.get(&key) } {
                Some(svc) if svc.flags & SVC_F_NODEPORT != 0 => *svc,
                _ => return ALLOW,
            }
        }
    };
    // The node is inside the cluster: the cluster-wide entry of a frontend whose
    // external one keeps to local endpoints.
    if svc.flags & SVC_F_TWO_SCOPES != 0 {
        key.scope = SCOPE_INTERNAL;
        // SAFETY: valid for this run.
        match unsafe { SERVICES.get(&key) } {
            Some(internal) => svc = *internal,
            None => return ALLOW,
        }
    }
    if svc.count == 0 {
        // Endpoints only on other nodes (internalTrafficPolicy Local): kube-proxy
        // drops, and the caller times out; here it learns so at once, and the
        // ClusterIP does not leave the node untranslated. Otherwise as kube-proxy's
        // REJECT: "connection refused".
        let errno = if svc.flags & SVC_F_DROP_EMPTY != 0 {
            ETIMEDOUT
        } else {
            ECONNREFUSED
        };
        // SAFETY: no preconditions.
        unsafe { bpf_set_retval(-errno) };
        return 0;
    }
    // SAFETY: valid for this run.
    let Some(backend) = select::random_slot(&key, svc.count)
        .ok()
        .and_then(|id| unsafe { BACKENDS.get(&id) })
    else {
        return ALLOW;
    };
    // Remembered for replies (UDP) and `getpeername` (both).
    {
        let mut rev = SockRevKey {
            family,
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
        read(ctx, family, &mut front.addr);
        // Best effort: without it, replies show the backend's address.
        let _ = SOCK_REV.insert(&rev, &front, 0);
    }
    write(ctx, family, &backend.addr, backend.port);
    ALLOW
}

/// A datagram received on a socket we translated at send: from the frontend.
#[inline(always)]
fn from_frontend(ctx: &SockAddrContext, family: u8) -> i32 {
    if ours(ctx).is_none() {
        return ALLOW;
    }
    let mut rev = SockRevKey {
        family,
        ..SockRevKey::default()
    };
    // SAFETY: valid for this context type.
    rev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    rev.port = read(ctx, family, &mut rev.addr);
    // SAFETY: valid for this run.
    if let Some(front) = unsafe { SOCK_REV.get(&rev) } {
        write(ctx, family, &front.addr, front.port);
    }
    ALLOW
}

#[inline(always)]
fn is_loopback(family: u8, addr: &[u8; 16]) -> bool {
    if family == AF_INET {
        addr[0] == 127
    } else {
        addr[..15].iter().all(|b| *b == 0) && addr[15] == 1
    }
}
