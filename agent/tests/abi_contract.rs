//! Tier 0 (no root): the embedded eBPF object and the shared Rust types agree.
//! A layout change on one side only fails here, before anything reaches a kernel.

use weir_agent::datapath::{maps, object::OBJECT};
use weir_common::programs::{FROM_NETDEV, FROM_POD, TO_NETDEV, TO_POD};

#[test]
fn every_map_in_the_object_matches_its_shared_type() {
    let obj = aya_obj::Object::parse(OBJECT).expect("parse embedded object");
    for spec in maps::ALL {
        let map = obj
            .maps
            .get(spec.name)
            .unwrap_or_else(|| panic!("map {} missing from the object", spec.name));
        assert_eq!(
            (map.key_size(), map.value_size(), map.max_entries()),
            (spec.key_size, spec.value_size, spec.max_entries),
            "map {}: object vs weir-common",
            spec.name
        );
        assert!(
            spec.name.len() <= 15,
            "map name {} is longer than the kernel keeps",
            spec.name
        );
    }
    // Sections such as `.rodata.cst16` (constants LLVM keeps in memory) are
    // global data, which aya makes into maps of each load: not shared state.
    let named: Vec<_> = obj.maps.keys().filter(|name| !name.starts_with('.')).collect();
    assert_eq!(
        named.len(),
        maps::ALL.len(),
        "object has maps the agent does not know: {named:?}"
    );
}

#[test]
fn the_object_has_the_pod_programs() {
    let obj = aya_obj::Object::parse(OBJECT).expect("parse embedded object");
    for name in [FROM_POD, TO_POD, FROM_NETDEV, TO_NETDEV] {
        assert!(
            obj.programs.contains_key(name),
            "program {name} missing: {:?}",
            obj.programs.keys()
        );
    }
}
