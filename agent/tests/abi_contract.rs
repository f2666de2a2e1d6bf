//! Tier 0 (no root): the embedded eBPF object and the shared Rust types agree.
//! A layout change on one side only fails here, before anything reaches a kernel.

use weir_agent::datapath::{maps, object::OBJECT};
use weir_common::{
    Dir, Reason, metrics_index, metrics_slot,
    programs::{CLASSIFIERS, FROM_NETDEV, FROM_POD, SOCK_HOOKS, TO_NETDEV, TO_POD},
};

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

#[test]
fn the_object_has_the_socket_hooks_at_their_attach_points() {
    let obj = aya_obj::Object::parse(OBJECT).expect("parse embedded object");
    // The hook's name says where it attaches: the loader attaches each by the
    // section the object gives it, so a name and a section that disagree
    // would translate (or fail to translate back) in the wrong place.
    let expected = [
        ("sock_connect4", "Connect4"),
        ("sock_connect6", "Connect6"),
        ("sock_sendmsg4", "UDPSendMsg4"),
        ("sock_sendmsg6", "UDPSendMsg6"),
        ("sock_recvmsg4", "UDPRecvMsg4"),
        ("sock_recvmsg6", "UDPRecvMsg6"),
        ("sock_peer4", "GetPeerName4"),
        ("sock_peer6", "GetPeerName6"),
    ];
    assert_eq!(SOCK_HOOKS.len(), expected.len());
    for (name, attach) in expected {
        assert!(
            SOCK_HOOKS.contains(&name),
            "{name} not in weir_common::programs::SOCK_HOOKS"
        );
        let program = obj
            .programs
            .get(name)
            .unwrap_or_else(|| panic!("socket hook {name} missing: {:?}", obj.programs.keys()));
        match &program.section {
            aya_obj::ProgramSection::CgroupSockAddr { attach_type } => {
                assert_eq!(format!("{attach_type:?}"), attach, "{name} attaches elsewhere")
            }
            other => panic!("{name} is not a cgroup/sock_addr program: {other:?}"),
        }
    }
    for name in CLASSIFIERS {
        let program = obj.programs.get(name).expect("classifier in the object");
        assert!(
            matches!(program.section, aya_obj::ProgramSection::SchedClassifier),
            "{name} is not a TC classifier"
        );
    }
}

#[test]
fn reason_and_direction_codes_round_trip() {
    for reason in Reason::ALL {
        assert_eq!(Reason::try_from(reason as u8), Ok(reason));
        let (dir, code) = metrics_slot(metrics_index(Dir::Socket, reason));
        assert_eq!(
            (Dir::try_from(dir), Reason::try_from(code)),
            (Ok(Dir::Socket), Ok(reason))
        );
    }
    assert_eq!(
        Reason::try_from(Reason::ALL.len() as u8),
        Err(Reason::ALL.len() as u8)
    );
    assert_eq!(Reason::describe_code(255), "unknown");
    assert!(
        (metrics_index(Dir::Xdp, Reason::ALL[Reason::ALL.len() - 1])) < weir_common::maps::METRICS_ENTRIES,
        "every (direction, reason) has a slot in the metrics map"
    );
}
