//! `weirctl metrics`: packets and bytes the programs counted, per direction and
//! reason, summed over the CPUs.

use serde::Serialize;
use weir_common::{Dir, Reason, metrics_slot};

use super::{CtlError, Row, open};
use crate::datapath::{
    PinLayout,
    maps::{self, Metrics},
};

#[derive(Debug, Serialize)]
pub struct MetricRow {
    pub direction: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

impl Row for MetricRow {
    const HEADERS: &'static [&'static str] = &["DIRECTION", "REASON", "PACKETS", "BYTES"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.direction.to_owned(),
            self.reason.to_owned(),
            self.packets.to_string(),
            self.bytes.to_string(),
        ]
    }
}

/// In slot order.
pub fn metrics(pins: &PinLayout) -> Result<Vec<MetricRow>, CtlError> {
    let map: Metrics = open(pins, &maps::METRICS)?;
    let sums = maps::sum_metrics(&map).map_err(|e| CtlError::Datapath(Box::new(e)))?;
    Ok(sums
        .into_iter()
        .map(|(slot, v)| {
            let (dir, reason) = metrics_slot(slot);
            MetricRow {
                direction: Dir::try_from(dir).map_or("unknown", Dir::name),
                reason: Reason::describe_code(reason),
                packets: v.packets,
                bytes: v.bytes,
            }
        })
        .collect())
}
