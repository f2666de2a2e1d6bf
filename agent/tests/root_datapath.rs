//! Tier 1 (root + kernel): the programs pass the verifier, maps are pinned and
//! reused, and incompatible pins are refused rather than silently reused.

use std::{path::PathBuf, process::Command};

use weir_agent::datapath::{Datapath, DatapathError, PinLayout, maps};

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
