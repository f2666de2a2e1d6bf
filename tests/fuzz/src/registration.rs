//! The registration protocol between `weir-cni` and the agent.

use weir_agent_api::{Reply, Request};

/// `data`: one request line as a client might send it, or a reply.
pub fn request(data: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        // Whatever decodes is judged, and what the agent accepts round-trips.
        if weir_agent::cni_server::validate(&request).is_ok() {
            let line = serde_json::to_vec(&request).expect("encode");
            assert_eq!(serde_json::from_slice::<Request>(&line).expect("decode"), request);
        }
    }
    let _ = serde_json::from_slice::<Reply>(data);
}
