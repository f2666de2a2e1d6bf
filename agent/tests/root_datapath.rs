//! Tier 1 (root + kernel): the programs pass the verifier, maps are pinned and
//! reused, and incompatible pins are refused rather than silently reused.

use std::{path::PathBuf, process::Command};

use weir_agent::datapath::{Datapath, DatapathError, LoadOptions, PinLayout, maps};

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test loads eBPF programs and needs root: run it as root"
    );
    assert!(
        Command::new("mountpoint")
            .args(["-q", "/sys/fs/bpf"])
            .status()
            .is_ok_and(|s| s.success()),
        "bpffs is not mounted at /sys/fs/bpf: run scripts/setup.sh"
    );
}

/// A pin root of its own, removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/weir-test-{tag}-{}",
            std::process::id()
        )))
    }
    fn pins(&self) -> PinLayout {
        PinLayout::new(&self.0)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn root_programs_load_and_maps_are_pinned_and_reused() {
    require_root();
    let root = TempRoot::new("load");
    let dp = Datapath::load(root.pins()).expect("programs pass the verifier");
    for spec in maps::ALL {
        assert!(
            root.pins().map(spec.name).exists(),
            "map {} not pinned",
            spec.name
        );
    }
    let id = |name: &str| {
        aya::maps::MapInfo::from_pin(root.pins().map(name))
            .expect("map info")
            .id()
    };
    let first = id(maps::ENDPOINTS.name);
    drop(dp);
    // A second agent (a restart) must find the same map, not a new one.
    let _dp = Datapath::load(root.pins()).expect("reload");
    assert_eq!(id(maps::ENDPOINTS.name), first, "restart replaced the pinned map");
}

/// `--preallocate-bpf-maps`: the Services' hash maps an agent makes hold
/// every entry from the start, and the datapath uses them; the others, and
/// a default load, are as the object defines them; an agent restarted
/// without the option keeps the maps pinned, entries and all.
#[test]
fn root_preallocated_maps_are_made_so_used_and_kept_across_restarts() {
    require_root();
    let preallocated = |root: &TempRoot, spec: &maps::MapSpec| {
        maps::is_preallocated(&root.pins(), spec).unwrap_or_else(|e| panic!("{}: {e}", spec.name))
    };
    let plain = TempRoot::new("plain");
    drop(Datapath::load(plain.pins()).expect("load"));
    for spec in &maps::PREALLOCATABLE {
        assert!(
            !preallocated(&plain, spec),
            "{} preallocated by default",
            spec.name
        );
    }

    let root = TempRoot::new("prealloc");
    let options = LoadOptions {
        preallocate_maps: true,
    };
    let mut dp = Datapath::load_with(root.pins(), options).expect("programs pass the verifier");
    for spec in &maps::PREALLOCATABLE {
        assert!(preallocated(&root, spec), "{} not preallocated", spec.name);
    }
    assert!(
        !preallocated(&root, &maps::MAGLEV),
        "Maglev's tables preallocated"
    );
    let backend = weir_common::Backend {
        port: 8080,
        ..Default::default()
    };
    dp.backends
        .insert(7, backend, 0)
        .expect("write through the datapath's handle");
    let pinned: aya::maps::HashMap<_, u32, weir_common::Backend> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(root.pins().map(maps::BACKENDS.name)).expect("pinned"),
        ))
        .expect("a hash map");
    assert_eq!(
        pinned.get(&7, 0).ok(),
        Some(backend),
        "the datapath writes the pinned map"
    );
    drop(dp);

    let dp = Datapath::load(root.pins()).expect("restart without the option");
    for spec in &maps::PREALLOCATABLE {
        assert!(preallocated(&root, spec), "{} made again on restart", spec.name);
    }
    assert_eq!(
        dp.backends.get(&7, 0).ok(),
        Some(backend),
        "entry lost on restart"
    );
}

/// A preallocation refused leaves none of the maps made that way: a map that
/// cannot be made gets none pinned, and a pin that fails takes back those
/// pinned before it. The error names the option.
#[test]
fn root_a_failed_preallocation_leaves_no_map_preallocated() {
    require_root();
    let root = TempRoot::new("prealloc-fail");
    let pins = root.pins();
    std::fs::create_dir_all(pins.maps_dir()).expect("maps dir");
    let unmakeable = maps::MapSpec {
        max_entries: 0,
        ..maps::REVNAT
    };
    let err = maps::pin_preallocated(&pins, &[maps::SERVICES, unmakeable]).expect_err("no map of 0 entries");
    assert!(err.to_string().contains("--preallocate-bpf-maps"), "{err}");
    assert!(
        !pins.map(maps::SERVICES.name).exists(),
        "a map pinned before the failure"
    );

    // Something at the second map's path: its pin fails after the first's.
    std::fs::create_dir(pins.map(maps::REVNAT.name)).expect("a directory in the way");
    let err = maps::pin_preallocated(&pins, &[maps::SERVICES, maps::REVNAT]).expect_err("pin in the way");
    assert!(err.to_string().contains(maps::REVNAT.name), "{err}");
    assert!(
        !pins.map(maps::SERVICES.name).exists(),
        "the first pin not taken back"
    );
}

#[test]
fn root_incompatible_pinned_map_is_refused() {
    require_root();
    let root = TempRoot::new("compat");
    std::fs::create_dir_all(root.pins().maps_dir()).expect("mkdir");
    let path = root.pins().map(maps::ENDPOINTS.name);
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "16",
            "name",
            "weir_endp_v1",
        ])
        .output()
        .expect("bpftool (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match Datapath::load(root.pins()) {
        Err(DatapathError::IncompatiblePin { found, .. }) => assert_eq!(found, (4, 4, 16)),
        Err(e) => panic!("expected IncompatiblePin, got {e}"),
        Ok(_) => panic!("an incompatible pinned map was reused"),
    }
}

/// `weirctl` reads whatever the maps hold (an older agent's layout, a bug's,
/// a hostile writer's): every view of maps full of random bytes ends cleanly,
/// never in a panic.
#[test]
fn root_weirctl_views_never_panic_on_any_map_content() {
    use aya::maps::lpm_trie::Key;
    use weir_common::{
        AffinityKey, AffinityValue, Backend, CtKey, CtValue, EndpointInfo, EndpointKey, IpcacheKey,
        MaglevTable, PolicyCtValue, PolicyEndpoint, PolicyKey, PolicyShare, RevNat, ServiceKey, ServiceValue,
    };

    require_root();
    let root = TempRoot::new("garbage");
    let mut dp = Datapath::load(root.pins()).expect("load");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
        | 1;
    println!("seed {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    /// A value of `T` made of random bytes (every such struct is integers only).
    fn random<T: aya::Pod + Default>(next: &mut impl FnMut() -> u64) -> T {
        let mut v = T::default();
        // SAFETY: T is repr(C) integers and padding: any bytes are a valid T.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut((&raw mut v).cast::<u8>(), std::mem::size_of::<T>()) };
        for b in bytes {
            *b = next() as u8;
        }
        v
    }
    for _ in 0..200 {
        let mut key: ServiceKey = random(&mut next);
        // Frontends and slots that agree on a key, so that views walk them.
        key.slot = (next() % 4) as u16;
        let _ = dp.services.insert(key, random::<ServiceValue>(&mut next), 0);
        let _ = dp
            .backends
            .insert((next() % 64) as u32, random::<Backend>(&mut next), 0);
        let _ = dp
            .revnat
            .insert((next() % 64) as u32, random::<RevNat>(&mut next), 0);
        let _ = dp
            .conntrack
            .insert(random::<CtKey>(&mut next), random::<CtValue>(&mut next), 0);
        let _ = dp.affinity.insert(
            random::<AffinityKey>(&mut next),
            random::<AffinityValue>(&mut next),
            0,
        );
        let _ = dp.endpoints.insert(
            random::<EndpointKey>(&mut next),
            random::<EndpointInfo>(&mut next),
            0,
        );
        let _ = dp.policy_endpoints.insert(
            random::<EndpointKey>(&mut next),
            random::<PolicyEndpoint>(&mut next),
            0,
        );
        let _ = dp.ipcache.insert(
            &Key::new((next() % 137) as u32, random::<IpcacheKey>(&mut next)),
            next() as u32,
            0,
        );
        let _ = dp.policy.insert(
            &Key::new((next() % 97) as u32, random::<PolicyKey>(&mut next)),
            next() as u32,
            0,
        );
        let _ = dp
            .policy_shares
            .insert(next() as u32, random::<PolicyShare>(&mut next), 0);
    }
    // A frontend with thousands of backend slots, each a long address.
    let mut head = ServiceValue {
        count: 4000,
        ..Default::default()
    };
    head.flags = next() as u32;
    let _ = dp.services.insert(ServiceKey::default(), head, 0);
    for slot in 1..=4000u16 {
        let _ = dp.services.insert(
            ServiceKey {
                slot,
                ..Default::default()
            },
            ServiceValue {
                backend_id: u32::from(slot % 64),
                ..Default::default()
            },
            0,
        );
    }
    let _ = dp.maglev.insert(
        (next() % 64) as u32,
        MaglevTable([next() as u32; weir_common::MAGLEV_TABLE_SIZE]),
        0,
    );
    // Source ranges of frontends that exist and not, any prefix length.
    for _ in 0..50 {
        let key = weir_common::SourceRangeKey {
            rev_nat_id: (next() % 8) as u32,
            family: [0, weir_common::AF_INET, weir_common::AF_INET6, 99][(next() % 4) as usize],
            addr: random(&mut next),
            _pad: [0; 3],
        };
        let bits = weir_common::SOURCE_RANGE_PREFIX_BITS + (next() % 129) as u32;
        let _ = dp
            .source_ranges
            .insert(&aya::maps::lpm_trie::Key::new(bits, key), 1, 0);
    }
    let mut policy_ct: aya::maps::HashMap<_, CtKey, PolicyCtValue> =
        maps::open_pinned(&root.pins(), &maps::POLICY_CT).expect("policy conntrack");
    let mut metrics: aya::maps::PerCpuArray<_, weir_common::MetricValue> =
        maps::open_pinned(&root.pins(), &maps::METRICS).expect("metrics");
    for _ in 0..100 {
        let _ = policy_ct.insert(random::<CtKey>(&mut next), random::<PolicyCtValue>(&mut next), 0);
    }
    let cpus = aya::util::nr_cpus().expect("cpus");
    for slot in 0..64 {
        let values: Vec<weir_common::MetricValue> = (0..cpus).map(|_| random(&mut next)).collect();
        let _ = metrics.set(
            slot * 16,
            aya::maps::PerCpuValues::try_from(values).expect("per cpu"),
            0,
        );
    }

    // (`drops` and `monitor` read the agent's events, not the maps; `status`
    // says the agent is down and reads the maps.)
    let views: [&[&str]; 12] = [
        &["endpoints"],
        &["metrics"],
        &["services"],
        &["backends"],
        &["conntrack"],
        &["affinity"],
        &["policy"],
        &["ipcache"],
        &["tunnels"],
        &["source-ranges"],
        &["status", "--agent", "127.0.0.1:1"],
        &["explain", "10.0.0.1", "10.96.0.1:80"],
    ];
    for view in views {
        for output in ["table", "json"] {
            let out = Command::new(env!("CARGO_BIN_EXE_weirctl"))
                .arg("--bpffs-root")
                .arg(&root.0)
                .args(["-o", output])
                .args(view)
                .output()
                .expect("run weirctl");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("panicked"),
                "weirctl -o {output} {view:?} panicked: {stderr}"
            );
            assert!(out.status.success(), "weirctl -o {output} {view:?}: {stderr}");
        }
    }
}
