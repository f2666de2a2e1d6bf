//! Manifests through the parser and the compilers.

use weir_model::{
    IdAllocator, Model, NodeContext, compile_services,
    parse::check_simple_yaml,
    parse_documents,
    policy::{PolicyEncoder, compile_policies, local_pod_ips},
};

/// `data`: a manifest file (any bytes; not UTF-8 is the reader's problem, so
/// it is decoded lossily here).
pub fn compile(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (objects, problems) = parse_documents(&text, "fuzz.yaml");
    for p in &problems {
        let shown = p.to_string();
        assert!(shown.len() < 4096, "unbounded problem: {} bytes", shown.len());
    }
    let model = Model::from_objects(objects);
    let context = NodeContext::new("node-a");
    let (_services, _problems) = compile_services(&model, &context, &mut IdAllocator::new());
    let (policies, _problems) = compile_policies(&model);
    let _ = PolicyEncoder::default().encode(&policies, &local_pod_ips(&model, "node-a"));
}

/// `data`: one YAML document. Wherever the reader of simple documents takes
/// it, the general parser must read the same value.
pub fn yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(difference) = check_simple_yaml(&text) {
        panic!("the two YAML readers differ on {text:?}: {difference}");
    }
}
