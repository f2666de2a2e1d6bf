//! Service load balancing: frontend lookup, backend selection, conntrack, NAT.

pub mod maps;
