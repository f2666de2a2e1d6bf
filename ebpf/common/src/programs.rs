//! Program names in the object, as user space looks them up.
pub const FROM_POD: &str = "from_pod";
pub const TO_POD: &str = "to_pod";
pub const FROM_NETDEV: &str = "from_netdev";
pub const TO_NETDEV: &str = "to_netdev";
pub const FROM_OVERLAY: &str = "from_overlay";
pub const TO_OVERLAY: &str = "to_overlay";
/// XDP on node devices (`--nodeport-acceleration`).
pub const FROM_NETDEV_XDP: &str = "from_netdev_xdp";
/// Every TC program: on pod veths, node devices and the overlay's device.
pub const CLASSIFIERS: [&str; 6] = [FROM_POD, TO_POD, FROM_NETDEV, TO_NETDEV, FROM_OVERLAY, TO_OVERLAY];
/// The socket hooks of the node's own processes (cgroup/connect4, ...).
pub const SOCK_HOOKS: [&str; 8] = [
    "sock_connect4",
    "sock_connect6",
    "sock_sendmsg4",
    "sock_sendmsg6",
    "sock_recvmsg4",
    "sock_recvmsg6",
    "sock_peer4",
    "sock_peer6",
];
