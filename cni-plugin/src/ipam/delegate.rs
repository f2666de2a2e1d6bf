//! Delegation to another IPAM plugin (`ipam.type`), as the reference plugins do:
//! the binary is looked up in `CNI_PATH` and run with our environment (only
//! `CNI_COMMAND` possibly changed) and our stdin; its error is passed through.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("IPAM plugin {plugin:?} not found in CNI_PATH ({searched})")]
    NotFound { plugin: String, searched: String },
    #[error("running IPAM plugin {}: {source}", path.display())]
    Exec { path: PathBuf, source: std::io::Error },
    /// The plugin's own error, passed through unchanged.
    #[error("{msg}")]
    Failed {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("IPAM plugin {plugin:?} printed something that is not a CNI result: {reason}")]
    BadOutput { plugin: String, reason: String },
}

pub fn find(plugin: &str, cni_path: &[PathBuf]) -> Result<PathBuf, DelegateError> {
    cni_path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| DelegateError::NotFound {
            plugin: plugin.to_owned(),
            searched: cni_path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// Runs `plugin` for `command` (`ADD`, `DEL`, ...); returns its stdout as JSON
/// (`None` when it printed nothing, as DEL does).
pub fn exec(
    plugin: &str,
    cni_path: &[PathBuf],
    command: &str,
    stdin: &[u8],
) -> Result<Option<Value>, DelegateError> {
    let path = find(plugin, cni_path)?;
    run(plugin, &path, command, stdin)
}

fn run(plugin: &str, path: &Path, command: &str, stdin: &[u8]) -> Result<Option<Value>, DelegateError> {
    let exec_err = |source| DelegateError::Exec {
        path: path.to_owned(),
        source,
    };
    let mut child = Command::new(path)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(exec_err)?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin may exit without reading everything: its exit status says more.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(exec_err)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bad = |reason: String| DelegateError::BadOutput {
        plugin: plugin.to_owned(),
        reason,
    };
    if !out.status.success() {
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            bad(format!(
                "exit status {} with output {:?}",
                out.status,
                text.trim()
            ))
        })?;
        return Err(DelegateError::Failed {
            plugin: plugin.to_owned(),
            code: v["code"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(crate::error::codes::DELEGATE),
            msg: v["msg"].as_str().unwrap_or("IPAM plugin failed").to_owned(),
            details: v["details"].as_str().unwrap_or_default().to_owned(),
        });
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}
