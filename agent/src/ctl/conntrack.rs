//! `weirctl conntrack`: translated flows, both directions, with time left.

use serde::Serialize;
use weir_common::{
    CT_F_CLOSING, CT_F_DATAGRAM, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_MASQ, CT_F_RESET, CT_F_SNAT,
    CT_FIN_CLIENT, CT_FIN_PEER, CT_OUT, CtKey, CtValue, maps as names,
};

use super::{CtlError, Row, ip, open, proto, sock, table::or_dash};
use crate::{
    conntrack::monotonic_ns,
    datapath::{
        PinLayout,
        maps::{self, Conntrack},
    },
};

/// One direction of a translated flow.
#[derive(Debug, Serialize)]
pub struct ConntrackRow {
    /// `out` (towards the backend) or `in` (the replies).
    pub dir: &'static str,
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub nat: String,
    /// The other end's address, on hairpin flows only; on source-NATed and
    /// masqueraded flows, the new source (out) or the client it stands for (in).
    pub nat2: Option<String>,
    pub flags: Vec<&'static str>,
    pub rev_nat_id: u32,
    /// The frontend's Service, `namespace/name`, from the name table (absent when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub backend_id: u32,
    /// Negative once expired: the GC has not reached the entry yet.
    pub seconds_left: i64,
}

impl Row for ConntrackRow {
    const HEADERS: &'static [&'static str] = &[
        "DIR",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "NAT",
        "FLAGS",
        "REVNAT",
        "BACKEND",
        "TTL",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.dir.to_owned(),
            self.protocol.clone(),
            self.source.clone(),
            self.destination.clone(),
            match &self.nat2 {
                Some(other) if self.flags.contains(&"snat") => format!("{} (via {other})", self.nat),
                Some(other) => format!("{} (other end {other})", self.nat),
                None => self.nat.clone(),
            },
            or_dash(&self.flags, ","),
            super::labelled(&self.rev_nat_id.to_string(), self.service.as_ref()),
            self.backend_id.to_string(),
            if self.seconds_left < 0 {
                "expired".to_owned()
            } else {
                self.seconds_left.to_string()
            },
        ]
    }
}

pub fn conntrack(pins: &PinLayout) -> Result<Vec<ConntrackRow>, CtlError> {
    let map: Conntrack = open(pins, &maps::CONNTRACK)?;
    let now = monotonic_ns()?;
    let mut entries: Vec<(CtKey, CtValue)> = Vec::new();
    for entry in map.iter() {
        entries.push(entry.map_err(|source| CtlError::Map {
            map: names::CONNTRACK,
            source,
        })?);
    }
    entries.sort_by_key(|(k, _)| (k.proto, k.saddr, k.sport, k.daddr, k.dport, k.dir));
    let names = super::name_table(pins);
    Ok(entries
        .iter()
        .map(|(k, v)| ConntrackRow {
            service: names.service(v.rev_nat_id),
            ..row(k, v, now)
        })
        .collect())
}

/// The `CT_F_*` flags set in `flags`, by name (with their bits).
pub(super) fn flag_names(flags: u8) -> impl Iterator<Item = (u8, &'static str)> {
    [
        (CT_F_HAIRPIN, "hairpin"),
        (CT_F_CLOSING, "closing"),
        (CT_F_DATAGRAM, "datagram"),
        (CT_F_EXTERNAL, "external"),
        (CT_F_SNAT, "snat"),
        (CT_F_RESET, "reset"),
        (CT_F_MASQ, "masquerade"),
    ]
    .into_iter()
    .filter(move |(bit, _)| flags & bit != 0)
}

fn row(k: &CtKey, v: &CtValue, now: u64) -> ConntrackRow {
    let hairpin = v.flags & CT_F_HAIRPIN != 0;
    let snat = v.flags & CT_F_SNAT != 0;
    let flags = flag_names(v.flags)
        .chain(
            [(CT_FIN_CLIENT, "fin-client"), (CT_FIN_PEER, "fin-peer")]
                .into_iter()
                .filter(|(bit, _)| v.fins & bit != 0),
        )
        .map(|(_, n)| n)
        .collect();
    // Signed: an entry the GC has not reached yet shows how long ago it died.
    // Two u64 nanosecond counts apart, in seconds, always fit an i64.
    let seconds_left = ((i128::from(v.expires_ns) - i128::from(now)) / 1_000_000_000) as i64;
    ConntrackRow {
        dir: if k.dir == CT_OUT { "out" } else { "in" },
        protocol: proto(k.proto),
        source: sock(k.saddr, k.family, k.sport),
        destination: sock(k.daddr, k.family, k.dport),
        nat: sock(v.nat_addr, k.family, v.nat_port),
        nat2: if snat {
            Some(sock(v.nat2_addr, k.family, v.nat2_port))
        } else {
            hairpin
                .then(|| ip(v.nat2_addr, k.family).map(|a| a.to_string()))
                .flatten()
        },
        flags,
        rev_nat_id: v.rev_nat_id,
        service: None,
        backend_id: v.backend_id,
        seconds_left,
    }
}
