//! A Service as the model keeps it: what the services compiler reads of it.
//!
//! The API's `Service` is 824 bytes inline whatever it holds, its selector a
//! B-tree leaf of 544 bytes, each of its strings an allocation of its own: 16.9
//! MiB of the heap at 10,000 Services. The compiler reads a Service only through
//! its validation (`services::validate`), a function of the Service alone, and
//! endpoint lookup reads its selector and `publishNotReadyAddresses`. So the
//! model validates a Service once, when it comes in, and keeps the outcome: the
//! Service checked and defaulted in compact form, or the reason it is invalid
//! (reported by every compile, as before).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use crate::{
    labels::Labels,
    object::Meta,
    problem::ProblemReason,
    services::validate::{ValidService, validate},
    topology::Distribution,
};

/// What the model keeps of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceFacts {
    pub meta: Meta,
    /// `Ok(None)`: a Service this proxy does not implement (ExternalName,
    /// headless, another proxy's); `Err`: why it is invalid.
    pub(crate) checked: Result<Option<ValidService>, ProblemReason>,
    /// Findings that do not stop it (an unknown annotation value).
    pub(crate) warnings: Box<[ProblemReason]>,
    /// `spec.selector`, `None` when empty: the API server drops empty maps
    /// (`omitempty`), and the EndpointSlice controller manages only Services
    /// with a selector.
    pub(crate) selector: Option<Labels>,
    /// `spec.publishNotReadyAddresses`.
    pub(crate) publish_not_ready: bool,
    /// The hints `spec.trafficDistribution` has the EndpointSlice controller
    /// write (for the stand-in that derives endpoints from Pods).
    pub(crate) distribution: Option<Distribution>,
}

impl From<Service> for ServiceFacts {
    fn from(service: Service) -> Self {
        let mut warnings = Vec::new();
        let checked = validate(&service, &mut warnings);
        let spec = service.spec.unwrap_or_default();
        let mut metadata = service.metadata;
        let distribution = Distribution::of(
            spec.traffic_distribution.as_deref(),
            metadata.annotations.as_ref(),
        );
        Self {
            distribution,
            meta: Meta::take(&mut metadata),
            checked,
            warnings: warnings.into(),
            selector: spec.selector.filter(|s| !s.is_empty()).map(Labels::from),
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        }
    }
}

impl ServiceFacts {
    /// Its cluster IPs, parsed (none when the compiler does not implement it).
    pub fn cluster_ips(&self) -> &[IpAddr] {
        match &self.checked {
            Ok(Some(valid)) => &valid.cluster_ips,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_kept_in_far_less_than_the_apis_type() {
        // The box the model holds, before the few heap pieces (ports, addresses).
        assert!(
            std::mem::size_of::<ServiceFacts>() * 2 < std::mem::size_of::<Service>(),
            "{} bytes",
            std::mem::size_of::<ServiceFacts>()
        );
    }
}
