//! Attaching the programs with pinned links: the pod programs (TCX) to a pod's
//! host-side veth, the node programs (TCX, and XDP with
//! `--nodeport-acceleration`) to each of the node's devices, the socket hooks
//! to the cgroup whose processes reach Services through them.
//!
//! The links are pinned and never held open by the agent: the pin alone keeps a
//! program attached, so the datapath survives the agent. A new agent swaps its
//! freshly loaded program into each pinned link atomically (`bpf_link_update`),
//! without a moment where the veth has no program.

use std::io::ErrorKind;

use aya::programs::CgroupAttachMode;
use aya::programs::{
    LinkOrder, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::{XdpLink, XdpMode},
};
use tracing::{info, warn};
use weir_common::programs::{
    CLASSIFIERS, FROM_NETDEV, FROM_NETDEV_XDP, FROM_OVERLAY, FROM_POD, SOCK_HOOKS, TO_NETDEV, TO_OVERLAY,
    TO_POD,
};

use super::{
    Datapath, DatapathError,
    load::{classifier, sock_hook, xdp},
};

/// The programs on each pod veth and the TCX hook each goes to.
const POD_PROGRAMS: &[(&str, TcAttachType)] =
    &[(FROM_POD, TcAttachType::Ingress), (TO_POD, TcAttachType::Egress)];
/// The programs on each node device.
const DEVICE_PROGRAMS: &[(&str, TcAttachType)] = &[
    (FROM_NETDEV, TcAttachType::Ingress),
    (TO_NETDEV, TcAttachType::Egress),
];
/// The programs on the overlay's VXLAN device.
const OVERLAY_PROGRAMS: &[(&str, TcAttachType)] = &[
    (FROM_OVERLAY, TcAttachType::Ingress),
    (TO_OVERLAY, TcAttachType::Egress),
];
/// What [`Datapath::adopt_links`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachedCount {
    /// Endpoints whose links now run this agent's programs.
    pub adopted: usize,
    /// Endpoints whose veth is gone: their pins were removed.
    pub stale: Vec<u32>,
}

impl Datapath {
    /// Attaches (or re-attaches, idempotently) the pod programs to a host veth.
    pub fn attach_endpoint(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        self.attach(ifname, ifindex, POD_PROGRAMS)
    }

    /// Attaches the socket hooks to `cgroup` (cgroup v2; the root one covers every
    /// process), replacing those of an earlier agent: the new link is pinned
    /// beside the old one and renamed over it, so some hook runs at every instant
    /// (two at once are harmless: the second sees a backend, not a frontend).
    pub fn attach_cgroup(&mut self, cgroup: &std::path::Path) -> Result<(), DatapathError> {
        let dir = self.pins.cgroup_links();
        std::fs::create_dir_all(&dir).map_err(DatapathError::fs(&dir))?;
        let file = std::fs::File::open(cgroup).map_err(DatapathError::fs(cgroup))?;
        for name in SOCK_HOOKS {
            let attach_err = |source| DatapathError::AttachCgroup {
                program: name,
                cgroup: cgroup.to_owned(),
                source,
            };
            let prog = sock_hook(&mut self.ebpf, name)?;
            // A link (`bpf_link_create`, which aya uses here) takes no attach flags
            // and always lets other programs run beside it: `Single` passes none.
            let id = prog.attach(&file, CgroupAttachMode::Single).map_err(attach_err)?;
            let path = self.pins.cgroup_link(name);
            // (bpffs takes no dots in names.)
            let fresh = self.pins.cgroup_link(&format!("{name}_new"));
            let _ = std::fs::remove_file(&fresh);
            pin(prog.take_link(id).map_err(attach_err)?, &fresh)?;
            std::fs::rename(&fresh, &path).map_err(DatapathError::fs(&path))?;
        }
        Ok(())
    }

    /// Attaches (or re-attaches, idempotently) the node program to a device.
    pub fn attach_device(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        self.attach(ifname, ifindex, DEVICE_PROGRAMS)
    }

    /// Attaches (or re-attaches, idempotently) the node's XDP program to a
    /// device in the driver's own (native) XDP: generic XDP runs after the
    /// socket buffer is built, no sooner than TC, and gains nothing. Fails
    /// where the driver has no XDP, or another XDP program holds the device.
    pub fn attach_xdp(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        let dir = self.pins.endpoint_links(ifindex);
        std::fs::create_dir_all(&dir).map_err(DatapathError::fs(&dir))?;
        let path = self.pins.link(ifindex, FROM_NETDEV_XDP);
        match self.swap_into_pinned(FROM_NETDEV_XDP, &path) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                warn!(ifindex, program = FROM_NETDEV_XDP, error = %e, "replacing defunct pinned link");
                std::fs::remove_file(&path).map_err(DatapathError::fs(&path))?;
            }
        }
        let attach_err = |source| DatapathError::Attach {
            program: FROM_NETDEV_XDP,
            ifname: ifname.to_owned(),
            ifindex,
            source,
        };
        let prog = xdp(&mut self.ebpf, FROM_NETDEV_XDP)?;
        let id = prog.attach(ifname, XdpMode::Driver).map_err(attach_err)?;
        pin(prog.take_link(id).map_err(attach_err)?, &path)
    }

    /// Detaches the node's XDP program from a device (an earlier agent's,
    /// with acceleration since turned off). Idempotent.
    pub fn detach_xdp(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let path = self.pins.link(ifindex, FROM_NETDEV_XDP);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(DatapathError::Fs { path, source: e }),
            _ => Ok(()),
        }
    }

    /// Attaches (or re-attaches, idempotently) the overlay's programs to its
    /// VXLAN device (`--routing vxlan`).
    pub fn attach_overlay(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        self.attach(ifname, ifindex, OVERLAY_PROGRAMS)
    }

    fn attach(
        &mut self,
        ifname: &str,
        ifindex: u32,
        programs: &[(&'static str, TcAttachType)],
    ) -> Result<(), DatapathError> {
        let dir = self.pins.endpoint_links(ifindex);
        std::fs::create_dir_all(&dir).map_err(DatapathError::fs(&dir))?;
        for &(name, hook) in programs {
            let path = self.pins.link(ifindex, name);
            match self.swap_into_pinned(name, &path) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    // A link left by a veth that has gone (its ifindex now reused):
                    // drop the pin and attach afresh.
                    warn!(ifindex, program = name, error = %e, "replacing defunct pinned link");
                    std::fs::remove_file(&path).map_err(DatapathError::fs(&path))?;
                }
            }
            let attach_err = |source| DatapathError::Attach {
                program: name,
                ifname: ifname.to_owned(),
                ifindex,
                source,
            };
            let prog = classifier(&mut self.ebpf, name)?;
            let id = prog
                .attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(attach_err)?;
            pin(prog.take_link(id).map_err(attach_err)?, &path)?;
        }
        Ok(())
    }

    /// Removes an endpoint's pinned links: with the last reference gone, the kernel
    /// detaches the programs (if the veth still exists at all). Idempotent.
    pub fn detach_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let dir = self.pins.endpoint_links(ifindex);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(DatapathError::Fs { path: dir, source: e }),
            _ => Ok(()),
        }
    }

    /// After a restart: put this agent's programs into every pinned link, and drop
    /// the pins of interfaces that no longer exist.
    pub fn adopt_links(&mut self) -> Result<AttachedCount, DatapathError> {
        let mut count = AttachedCount::default();
        let dir = self.pins.links_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(count),
            Err(e) => return Err(DatapathError::Fs { path: dir, source: e }),
        };
        for entry in entries {
            let entry = entry.map_err(DatapathError::fs(&dir))?;
            let Some(ifindex) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let (mut swapped, mut alive) = (0, true);
            for name in CLASSIFIERS.into_iter().chain([FROM_NETDEV_XDP]) {
                match self.swap_into_pinned(name, &self.pins.link(ifindex, name)) {
                    Ok(true) => swapped += 1,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(ifindex, program = name, error = %e, "pinned link is defunct");
                        alive = false;
                    }
                }
            }
            let alive = alive && swapped > 0;
            if alive {
                count.adopted += 1;
            } else {
                self.detach_endpoint(ifindex)?;
                count.stale.push(ifindex);
            }
        }
        info!(
            adopted = count.adopted,
            stale = count.stale.len(),
            "adopted pinned links"
        );
        Ok(count)
    }

    /// Swaps this agent's program into the link pinned at `path`; `Ok(false)` when
    /// nothing is pinned there. The pin stays: it is what keeps the link alive.
    fn swap_into_pinned(
        &mut self,
        name: &'static str,
        path: &std::path::Path,
    ) -> Result<bool, DatapathError> {
        let pinned = match PinnedLink::from_pin(path) {
            Ok(pinned) => pinned,
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(DatapathError::Link {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let link_err = |source| DatapathError::Link {
            path: path.to_owned(),
            source,
        };
        let program_err = |source| DatapathError::Program { name, source };
        // Our fd on the new link closes as it drops; the pin keeps it attached.
        if name == FROM_NETDEV_XDP {
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
            let prog = xdp(&mut self.ebpf, name)?;
            let id = prog.attach_to_link(link).map_err(program_err)?;
            drop(prog.take_link(id).map_err(program_err)?);
        } else {
            let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
            let prog = classifier(&mut self.ebpf, name)?;
            let id = prog.attach_to_link(link).map_err(program_err)?;
            drop(prog.take_link(id).map_err(program_err)?);
        }
        Ok(true)
    }
}

/// Pins a link taken from its program, so that it outlives the agent.
fn pin<L: TryInto<FdLink, Error = LinkError>>(link: L, path: &std::path::Path) -> Result<(), DatapathError> {
    let link = link.try_into().map_err(|source| DatapathError::Link {
        path: path.to_owned(),
        source,
    })?;
    link.pin(path).map_err(|source| DatapathError::Pin {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}
