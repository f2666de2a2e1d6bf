#![no_main]

use std::sync::{Mutex, OnceLock};

use weir_fuzz::datapath::Datapath;

/// One datapath for the whole run, pinned under a root of this process
/// (scripts/fuzz.sh removes it afterwards).
static DATAPATH: OnceLock<Mutex<Datapath>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dp = DATAPATH.get_or_init(|| {
        let root = format!("/sys/fs/bpf/weir-fuzz-{}", std::process::id());
        Mutex::new(Datapath::new(root.into()))
    });
    dp.lock().unwrap_or_else(|p| p.into_inner()).run(data);
});
