//! The name table: Kubernetes names of what the maps hold by number or
//! address, so that `weirctl`'s views say `namespace/name` whether or not the
//! agent runs. Not read by any program: the agent creates and pins it beside
//! the datapath's maps ([`crate::maps::NAMES`]).

/// Key of [`crate::maps::NAMES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameKey {
    /// `NAME_*`: what `id` or `addr` identifies.
    pub kind: u8,
    /// [`NAME_POD`]: the address's family (`AF_INET`, `AF_INET6`).
    pub family: u8,
    pub _pad: [u8; 2],
    /// [`NAME_FRONTEND`]: the frontend's rev-NAT id.
    pub id: u32,
    /// [`NAME_POD`]: the pod's address.
    pub addr: [u8; 16], /* BE */
}
const _: () = assert!(core::mem::size_of::<NameKey>() == 24);

/// A Service frontend, by rev-NAT id: its Service.
pub const NAME_FRONTEND: u8 = 1;
/// A pod of this node, by address.
pub const NAME_POD: u8 = 2;
/// The agent's own addresses, by [`AGENT_MONITOR_SOCKET`] (and more to come):
/// where `weirctl` reaches it, found from the pins alone.
pub const NAME_AGENT: u8 = 3;
/// [`NAME_AGENT`]: the path of the agent's event stream's unix socket.
pub const AGENT_MONITOR_SOCKET: u32 = 1;

/// Bytes of a name: `namespace/name` (63 + 1 + 63 for a Service, pods' names
/// may be longer and are cut).
pub const NAME_BYTES: usize = 128;

/// Value of [`crate::maps::NAMES`]: UTF-8, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    pub bytes: [u8; NAME_BYTES],
}
const _: () = assert!(core::mem::size_of::<Name>() == NAME_BYTES);

impl Name {
    /// `text`, cut to [`NAME_BYTES`] on a character boundary.
    pub fn new(text: &str) -> Self {
        let mut cut = text.len().min(NAME_BYTES);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut bytes = [0; NAME_BYTES];
        bytes[..cut].copy_from_slice(&text.as_bytes()[..cut]);
        Self { bytes }
    }

    /// The text up to the first NUL (invalid UTF-8: none).
    pub fn text(&self) -> Option<&str> {
        let len = self.bytes.iter().position(|b| *b == 0).unwrap_or(NAME_BYTES);
        core::str::from_utf8(&self.bytes[..len]).ok()
    }
}

crate::pod!(NameKey, Name);
