//! Weir's cluster model and compiler: Kubernetes objects in, the desired contents of
//! the eBPF maps out.
//!
//! Everything here is a deterministic function of its inputs: no kernel, no I/O, no
//! clock, no randomness. The sources (API watchers, a YAML directory) fill a
//! [`Model`]; the compilers turn it into map contents ([`DesiredServices`]); the
//! agent's syncer writes the difference to the pinned maps. All Kubernetes semantics
//! live here, where they are tested in microseconds.

pub mod endpoints;
pub mod ids;
pub mod labels;
pub mod maglev;
pub mod masquerade;
pub mod merge;
pub mod model;
pub mod net;
pub mod nodes;
pub mod object;
pub mod parse;
pub mod pod;
pub mod policy;
pub mod problem;
pub mod service;
pub mod services;
pub mod slice;
#[cfg(test)]
mod testing;
pub mod topology;

pub use crate::{
    ids::{IdAllocator, IdError},
    maglev::{MaglevError, maglev_table},
    model::Model,
    net::{Family, Protocol},
    object::{Kind, Object, ObjectKey},
    parse::{Parsed, PartRunner, parse_documents, parse_documents_detailed, parse_documents_on},
    problem::{Problem, ProblemReason, bounded},
    services::{DesiredServices, LbAlgorithm, NodeContext, compile_services},
};
