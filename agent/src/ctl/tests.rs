//! The JSON of every view, key by key: scripts and the end-to-end tests parse it,
//! so a renamed, reordered, retyped or skipped key is a break. One sample row per
//! view, serialized as `weirctl -o json` does, against the text it gave before
//! the rows were typed.

use serde::Serialize;

use super::*;

fn json(row: &impl Serialize) -> String {
    serde_json::to_string(row).unwrap_or_else(|e| panic!("serializing: {e}"))
}

#[test]
fn endpoints_keys() {
    let row = EndpointRow {
        ip: "10.0.0.5".into(),
        ifindex: 7,
        mac: Some("02:00:00:00:00:05".into()),
        host_mac: None,
        pod: Some("default/a".into()),
    };
    assert_eq!(
        json(&row),
        r#"{"ip":"10.0.0.5","ifindex":7,"mac":"02:00:00:00:00:05","host_mac":null,"pod":"default/a"}"#
    );
}

#[test]
fn metrics_keys() {
    let row = MetricRow {
        direction: "from-pod",
        reason: "passed",
        packets: 3,
        bytes: 180,
    };
    assert_eq!(
        json(&row),
        r#"{"direction":"from-pod","reason":"passed","packets":3,"bytes":180}"#
    );
}

#[test]
fn services_keys_with_every_kind_of_slot() {
    let row = ServiceRow {
        frontend: "10.96.0.10:80/TCP".into(),
        service: Some("default/web:http".into()),
        address: Some("10.96.0.10".into()),
        port: 80,
        protocol: "TCP".into(),
        scope: "external",
        rev_nat_id: 1,
        flags: vec!["affinity", "maglev"],
        topology: None,
        algorithm: Algorithm::Maglev,
        affinity_timeout: Some(10800),
        count: 4,
        backends: vec![
            SlotRow {
                slot: Some(1),
                id: Some(5),
                address: Some("10.0.0.5:8080".into()),
                state: "active",
                missing: None,
            },
            SlotRow {
                slot: Some(2),
                id: Some(9),
                address: None,
                state: "missing-backend",
                missing: None,
            },
            SlotRow {
                slot: None,
                id: None,
                address: None,
                state: "missing-slot",
                missing: Some(2),
            },
        ],
    };
    assert_eq!(
        json(&row),
        concat!(
            r#"{"frontend":"10.96.0.10:80/TCP","service":"default/web:http","address":"10.96.0.10","#,
            r#""port":80,"protocol":"TCP","#,
            r#""scope":"external","rev_nat_id":1,"flags":["affinity","maglev"],"algorithm":"maglev","#,
            r#""affinity_timeout":10800,"count":4,"backends":["#,
            r#"{"slot":1,"id":5,"address":"10.0.0.5:8080","state":"active"},"#,
            r#"{"slot":2,"id":9,"address":null,"state":"missing-backend"},"#,
            r#"{"slot":null,"id":null,"address":null,"state":"missing-slot","missing":2}]}"#,
        )
    );
}

#[test]
fn services_keys_without_affinity_or_address() {
    let row = ServiceRow {
        frontend: "?/7".into(),
        // Unknown: not in the JSON at all.
        service: None,
        address: None,
        port: 0,
        protocol: "7".into(),
        scope: "internal",
        rev_nat_id: 2,
        flags: vec![],
        topology: None,
        algorithm: Algorithm::Random,
        affinity_timeout: None,
        count: 0,
        backends: vec![],
    };
    assert_eq!(
        json(&row),
        concat!(
            r#"{"frontend":"?/7","address":null,"port":0,"protocol":"7","scope":"internal","#,
            r#""rev_nat_id":2,"flags":[],"algorithm":"random","affinity_timeout":null,"count":0,"#,
            r#""backends":[]}"#,
        )
    );
}

#[test]
fn backends_keys() {
    let row = BackendRow {
        id: 5,
        address: "10.0.0.5:8080".into(),
        protocol: "TCP".into(),
        state: "terminating",
        slots: 2,
        // Unnamed: not in the JSON at all.
        pod: None,
    };
    assert_eq!(
        json(&row),
        r#"{"id":5,"address":"10.0.0.5:8080","protocol":"TCP","state":"terminating","slots":2}"#
    );
}

#[test]
fn conntrack_keys() {
    let row = ConntrackRow {
        dir: "out",
        protocol: "TCP".into(),
        source: "10.0.0.2:40000".into(),
        destination: "10.96.0.10:80".into(),
        nat: "10.0.0.5:8080".into(),
        nat2: None,
        flags: vec!["closing"],
        rev_nat_id: 1,
        service: Some("default/web".into()),
        backend_id: 5,
        seconds_left: -3,
    };
    assert_eq!(
        json(&row),
        concat!(
            r#"{"dir":"out","protocol":"TCP","source":"10.0.0.2:40000","destination":"10.96.0.10:80","#,
            r#""nat":"10.0.0.5:8080","nat2":null,"flags":["closing"],"rev_nat_id":1,"service":"default/web","#,
            r#""backend_id":5,"#,
            r#""seconds_left":-3}"#,
        )
    );
}

#[test]
fn affinity_keys() {
    let row = AffinityRow {
        client: Some("10.0.0.2".into()),
        rev_nat_id: 1,
        service: None,
        frontend: None,
        backend_id: 5,
        backend: Some("10.0.0.5:8080".into()),
        idle_seconds: 12,
    };
    assert_eq!(
        json(&row),
        concat!(
            r#"{"client":"10.0.0.2","rev_nat_id":1,"frontend":null,"backend_id":5,"#,
            r#""backend":"10.0.0.5:8080","idle_seconds":12}"#,
        )
    );
}

#[test]
fn policy_keys() {
    let row = PolicyRow {
        endpoint: Some("10.0.0.5".into()),
        endpoint_id: 3,
        pod: Some("default/b".into()),
        direction: "ingress",
        identity: None,
        peers: "nothing admitted".into(),
        protocol: "-".into(),
        ports: "-".into(),
    };
    assert_eq!(
        json(&row),
        concat!(
            r#"{"endpoint":"10.0.0.5","endpoint_id":3,"pod":"default/b","direction":"ingress","identity":null,"#,
            r#""peers":"nothing admitted","protocol":"-","ports":"-"}"#,
        )
    );
}

#[test]
fn ipcache_keys() {
    let row = IpcacheRow {
        prefix: "10.0.0.0/24".into(),
        identity: 4,
    };
    assert_eq!(json(&row), r#"{"prefix":"10.0.0.0/24","identity":4}"#);
}

#[test]
fn event_keys() {
    let row = EventRow {
        kind: "drop".into(),
        direction: "to-pod".into(),
        ifindex: 0,
        device: None,
        reason: "denied by NetworkPolicy (ingress)".into(),
        code: "policy_ingress".into(),
        source: "10.0.0.2:40000".into(),
        destination: "10.0.0.5:8080".into(),
        protocol: "TCP".into(),
        source_pod: None,
        destination_pod: Some("default/web".into()),
        service: None,
        rev_nat_id: 0,
        backend: None,
        backend_pod: None,
        new_source: None,
        translation: Vec::new(),
        endpoint: None,
        endpoint_id: 3,
        pod: None,
        peer_identity: 4,
    };
    let text = json(&row);
    assert_eq!(
        text,
        concat!(
            r#"{"type":"drop","direction":"to-pod","ifindex":0,"#,
            r#""reason":"denied by NetworkPolicy (ingress)","code":"policy_ingress","#,
            r#""source":"10.0.0.2:40000","destination":"10.0.0.5:8080","protocol":"TCP","#,
            r#""destination_pod":"default/web","rev_nat_id":0,"#,
            r#""endpoint":null,"endpoint_id":3,"peer_identity":4}"#,
        )
    );
    // What the agent streams is what weirctl reads back.
    assert_eq!(serde_json::from_str::<EventRow>(&text).expect("parse"), row);
}

/// An event's bytes, as the ring buffer holds them.
fn event_bytes(event: &weir_common::Event) -> Vec<u8> {
    // SAFETY: a plain-integer struct viewed as its bytes.
    unsafe { std::slice::from_raw_parts((&raw const *event).cast::<u8>(), size_of::<weir_common::Event>()) }
        .to_vec()
}

fn wide4(ip: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&ip);
    a
}

#[test]
fn a_drop_event_is_named_from_the_endpoints_and_the_name_table() {
    use weir_common::{AF_INET, EndpointKey, Event, PolicyEndpoint};
    let endpoints = [(
        EndpointKey {
            addr: wide4([10, 0, 0, 5]),
            family: AF_INET,
            ..EndpointKey::default()
        },
        PolicyEndpoint { id: 3, flags: 1 },
    )]
    .into();
    let mut names = NameTable::default();
    names
        .pods
        .insert("10.0.0.5".parse().expect("ip"), "default/web".to_owned());
    let namer = Namer::new(&endpoints, names);
    let event = Event {
        saddr: wide4([10, 0, 0, 2]),
        daddr: wide4([10, 0, 0, 5]),
        sport: 40000u16.to_be(),
        dport: 8080u16.to_be(),
        proto: weir_common::IPPROTO_TCP,
        family: AF_INET,
        reason: weir_common::Reason::PolicyIngress as u8,
        kind: weir_common::EVENT_DROP,
        endpoint: 3,
        identity: 4,
        dir: weir_common::Dir::ToPod as u8,
        ..Event::default()
    };
    let bytes = event_bytes(&event);
    assert_eq!(
        decode(&bytes[..48]),
        None,
        "a short record (the old layout's size)"
    );
    let row = namer.row(&decode(&bytes).expect("whole"));
    assert_eq!(row.endpoint.as_deref(), Some("10.0.0.5"));
    assert_eq!(row.pod.as_deref(), Some("default/web"));
    assert_eq!(row.destination_pod.as_deref(), Some("default/web"));
    assert_eq!(row.source_pod, None);
    assert_eq!(
        (
            row.kind.as_str(),
            row.direction.as_str(),
            row.code.as_str(),
            row.source.as_str()
        ),
        ("drop", "to-pod", "policy_ingress", "10.0.0.2:40000")
    );
    assert_eq!(row.cells()[4], "10.0.0.5:8080 (default/web)");
    assert_eq!(row.cells()[6], "endpoint 10.0.0.5 (default/web) peer identity 4");
    // An endpoint isolated since the numbers were read: the flow's receiver.
    let fresh = Namer::new(&std::collections::BTreeMap::new(), NameTable::default()).row(&event);
    assert_eq!(fresh.endpoint.as_deref(), Some("10.0.0.5"));
}

#[test]
fn a_translation_event_names_the_service_the_backend_and_the_new_source() {
    use weir_common::{AF_INET, CT_F_HAIRPIN, Event};
    let mut names = NameTable::default();
    names
        .pods
        .insert("10.0.0.5".parse().expect("ip"), "default/web-1".to_owned());
    names.frontends.insert(7, "default/web:http".to_owned());
    let namer = Namer::new(&std::collections::BTreeMap::new(), names)
        .with_devices([(12, "veth1a2b".to_owned())].into());
    let event = Event {
        saddr: wide4([10, 0, 0, 5]),
        daddr: wide4([10, 96, 0, 10]),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: weir_common::IPPROTO_TCP,
        family: AF_INET,
        kind: weir_common::EVENT_TRANSLATE,
        dir: weir_common::Dir::FromPod as u8,
        ct_flags: CT_F_HAIRPIN,
        nat_addr: wide4([10, 0, 0, 5]),
        nat_port: 8080u16.to_be(),
        nat2_addr: wide4([169, 254, 42, 1]),
        nat2_port: 40000u16.to_be(),
        rev_nat_id: 7,
        ifindex: 12,
        ..Event::default()
    };
    let row = namer.row(&decode(&event_bytes(&event)).expect("whole"));
    assert_eq!(row.kind, "translate");
    assert_eq!(row.device.as_deref(), Some("veth1a2b"));
    assert_eq!(row.code, "forwarded");
    assert_eq!(row.service.as_deref(), Some("default/web:http"));
    assert_eq!(row.backend.as_deref(), Some("10.0.0.5:8080"));
    assert_eq!(row.backend_pod.as_deref(), Some("default/web-1"));
    assert_eq!(row.new_source.as_deref(), Some("169.254.42.1:40000"));
    assert_eq!(row.translation, ["hairpin"]);
    assert_eq!(
        row.pods().collect::<Vec<_>>(),
        ["default/web-1", "default/web-1"],
        "the client and the backend are the same pod"
    );
    assert_eq!(
        row.cells()[6],
        "-> 10.0.0.5:8080 (default/web-1) from 169.254.42.1:40000 [hairpin] service default/web:http"
    );
    assert_eq!(row.ends().count(), 4);
}

/// The services table, as the README shows it.
#[test]
fn services_cells() {
    let slot = |address: Option<&str>, state| SlotRow {
        slot: Some(1),
        id: Some(1),
        address: address.map(str::to_owned),
        state,
        missing: None,
    };
    let row = |flags: Vec<&'static str>, algorithm, affinity_timeout, backends| ServiceRow {
        frontend: "10.96.0.10:80/TCP".into(),
        service: (!flags.is_empty()).then(|| "default/web:http".to_owned()),
        address: None,
        port: 80,
        protocol: "TCP".into(),
        scope: "external",
        rev_nat_id: 1,
        flags,
        topology: None,
        algorithm,
        affinity_timeout,
        count: 0,
        backends,
    };
    let rows = [
        row(
            vec!["affinity", "maglev"],
            Algorithm::Random,
            Some(10800),
            vec![
                slot(Some("10.0.0.5:8080"), "active"),
                slot(Some("10.0.0.7:8080"), "terminating"),
                slot(None, "missing-backend"),
                SlotRow {
                    slot: None,
                    id: None,
                    address: None,
                    state: "missing-slot",
                    missing: Some(2),
                },
            ],
        ),
        row(vec!["maglev"], Algorithm::Maglev, None, vec![]),
        row(vec![], Algorithm::Random, None, vec![]),
    ];
    assert_eq!(
        to_table(&rows),
        "FRONTEND           SERVICE           SCOPE     ID  FLAGS                             BACKENDS\n\
         10.96.0.10:80/TCP  default/web:http  external  1   affinity=10800s,maglev(no-table)  \
         10.0.0.5:8080 10.0.0.7:8080(terminating) ?(missing-backend) (2 slots missing)\n\
         10.96.0.10:80/TCP  default/web:http  external  1   maglev                            (none: reject)\n\
         10.96.0.10:80/TCP  -                 external  1   -                                 (none: reject)\n"
    );
}

/// Absent values read `null` in the table too, as they always have.
#[test]
fn policy_cells() {
    let row = PolicyRow {
        endpoint: None,
        endpoint_id: 3,
        pod: None,
        direction: "egress",
        identity: None,
        peers: "nothing admitted".into(),
        protocol: "-".into(),
        ports: "-".into(),
    };
    assert_eq!(
        row.cells(),
        ["null", "egress", "nothing admitted", "null", "-", "-"]
    );
}

#[test]
fn conntrack_cells() {
    let row = ConntrackRow {
        dir: "out",
        protocol: "TCP".into(),
        source: "10.0.0.2:40000".into(),
        destination: "10.96.0.10:80".into(),
        nat: "10.0.0.5:8080".into(),
        nat2: Some("169.254.42.1".into()),
        flags: vec!["hairpin", "closing"],
        rev_nat_id: 1,
        service: Some("default/web".into()),
        backend_id: 5,
        seconds_left: -1,
    };
    assert_eq!(
        row.cells(),
        [
            "out",
            "TCP",
            "10.0.0.2:40000",
            "10.96.0.10:80",
            "10.0.0.5:8080 (other end 169.254.42.1)",
            "hairpin,closing",
            "1 (default/web)",
            "5",
            "expired",
        ]
    );
}
