//! The CNI environment and configuration, as `weir-cni` decodes them.

use weir_cni::{
    Error,
    spec::{Env, NetConf, Version, config, error_json},
};

/// Codes `weir-cni` documents (README, "Error codes").
const DOCUMENTED: [u32; 16] = [1, 2, 3, 4, 5, 6, 7, 11, 50, 100, 101, 102, 103, 104, 999, 51];

/// `data`: `KEY=VALUE` lines (the `CNI_*` environment), a `0` byte, then the
/// configuration on stdin.
pub fn config(data: &[u8]) {
    let (env, stdin) = crate::split(data);
    let env = String::from_utf8_lossy(env);
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |k: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| (*v).to_owned())
    };
    let version = config::peek_version(stdin).unwrap_or(Version::LATEST);
    let outcome = Env::from_lookup(lookup)
        .map_err(Error::from)
        .and_then(|_| config::parse_version(stdin).map_err(Error::from))
        .and_then(|_| NetConf::parse(stdin).map_err(Error::from));
    if let Err(e) = outcome {
        let code = e.code();
        assert!(DOCUMENTED.contains(&code), "undocumented code {code} for {e}");
        let msg = e.to_string();
        assert!(msg.len() < 16 * 1024, "unbounded message: {} bytes", msg.len());
        let json = error_json(version, code, &msg, &e.details());
        let text = json.to_string();
        let back: serde_json::Value = serde_json::from_str(&text).expect("error JSON reads back");
        assert_eq!(back["code"], code);
    }
}
