//! STATUS (1.1.0): can this plugin take ADDs now? Not when the node has no pod
//! CIDR configured, when a range set is exhausted, or when the configured agent
//! does not answer.

use std::os::unix::net::UnixStream;

use crate::{
    Error,
    ipam::{self, disk::DiskStore},
    spec::{IpamConf, NetConf, config::ConfigError},
};

pub fn run(stdin: &[u8]) -> Result<(), Error> {
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e @ ConfigError::Invalid { .. }) => {
            return Err(Error::NotReady(format!("node not configured: {e}")));
        }
        Err(e) => return Err(e.into()),
    };
    if let IpamConf::Builtin { sets, data_dir } = &conf.ipam {
        let store = DiskStore::open(data_dir, &conf.name)?;
        if let Some(set) = ipam::exhausted_set(&store, sets)? {
            return Err(Error::NotReady(format!(
                "no free address in range {}",
                set.describe()
            )));
        }
    }
    if let Some(socket) = &conf.agent_socket {
        UnixStream::connect(socket).map_err(|e| {
            Error::NotReady(format!("weir-agent does not answer at {}: {e}", socket.display()))
        })?;
    }
    Ok(())
}
