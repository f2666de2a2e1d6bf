//! `weirctl conntrack`: translated flows, both directions, with time left.

use serde_json::json;
use weir_common::{CT_F_CLOSING, CT_F_DATAGRAM, CT_F_HAIRPIN, CT_OUT, CtKey, CtValue, maps as names};

use super::{CtlError, View, ip, open, proto, sock};
use crate::{
    conntrack::monotonic_ns,
    datapath::{
        PinLayout,
        maps::{self, Conntrack},
    },
};

pub fn conntrack(pins: &PinLayout) -> Result<View, CtlError> {
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
    let mut json = Vec::new();
    let mut rows = Vec::new();
    for (k, v) in &entries {
        let dir = if k.dir == CT_OUT { "out" } else { "in" };
        let source = sock(k.saddr, k.family, k.sport);
        let destination = sock(k.daddr, k.family, k.dport);
        let nat = sock(v.nat_addr, k.family, v.nat_port);
        let hairpin = v.flags & CT_F_HAIRPIN != 0;
        let nat2 = hairpin.then(|| ip(v.nat2_addr, k.family).map(|a| a.to_string()));
        let flags: Vec<&str> = [
            (CT_F_HAIRPIN, "hairpin"),
            (CT_F_CLOSING, "closing"),
            (CT_F_DATAGRAM, "datagram"),
        ]
        .into_iter()
        .filter(|(bit, _)| v.flags & bit != 0)
        .map(|(_, n)| n)
        .collect();
        // Signed: an entry the GC has not reached yet shows how long ago it died.
        let seconds_left = (i128::from(v.expires_ns) - i128::from(now)) / 1_000_000_000;
        rows.push(vec![
            dir.to_owned(),
            proto(k.proto),
            source.clone(),
            destination.clone(),
            match &nat2 {
                Some(Some(n2)) => format!("{nat} (other end {n2})"),
                _ => nat.clone(),
            },
            if flags.is_empty() {
                "-".into()
            } else {
                flags.join(",")
            },
            v.rev_nat_id.to_string(),
            v.backend_id.to_string(),
            if seconds_left < 0 {
                "expired".into()
            } else {
                seconds_left.to_string()
            },
        ]);
        json.push(json!({
            "dir": dir,
            "protocol": proto(k.proto),
            "source": source,
            "destination": destination,
            "nat": nat,
            "nat2": nat2.flatten(),
            "flags": flags,
            "rev_nat_id": v.rev_nat_id,
            "backend_id": v.backend_id,
            "seconds_left": seconds_left as i64,
        }));
    }
    Ok(View {
        json,
        columns: vec![
            "dir",
            "proto",
            "source",
            "destination",
            "nat",
            "flags",
            "revnat",
            "backend",
            "ttl",
        ],
        rows,
    })
}
