//! The `CNI_*` environment, validated per verb as the spec requires.

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    #[error("CNI_COMMAND {0} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC")]
    UnknownCommand(String),
    #[error("{var} is required for {command:?} but is not set")]
    Missing { var: &'static str, command: Command },
    /// `value` is already quoted and bounded ([`super::config::bounded`]).
    #[error("{var} is invalid: {value} {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("CNI_ARGS: unknown argument {0} (set IgnoreUnknown=1 to ignore it)")]
    UnknownArg(String),
}

/// `CNI_ARGS` we know about (`K=V;K=V`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    /// Set (and valid) for ADD, DEL and CHECK.
    pub container_id: String,
    /// Empty for DEL when the runtime no longer has the namespace.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Env {
    pub fn from_process() -> Result<Self, EnvError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the environment through `get`, so tests need not touch the process's.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match nonempty("CNI_COMMAND").as_deref() {
            None => return Err(EnvError::MissingCommand),
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => return Err(EnvError::UnknownCommand(super::config::bounded(other))),
        };
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |var: &'static str| nonempty(var).ok_or(EnvError::Missing { var, command });

        let (container_id, ifname, netns) = if per_attachment {
            let id = required("CNI_CONTAINERID")?;
            if !super::config::valid_name(&id) {
                return Err(EnvError::Invalid {
                    var: "CNI_CONTAINERID",
                    value: super::config::bounded(&id),
                    reason: "must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                });
            }
            if id.len() > CONTAINER_ID_MAX {
                return Err(EnvError::Invalid {
                    var: "CNI_CONTAINERID",
                    value: super::config::bounded(&id),
                    reason: "is longer than 1024 bytes",
                });
            }
            let ifname = required("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            let netns = match command {
                Command::Del => nonempty("CNI_NETNS"),
                _ => Some(required("CNI_NETNS")?),
            };
            if let Some(path) = &netns
                && path.len() > PATH_MAX
            {
                return Err(EnvError::Invalid {
                    var: "CNI_NETNS",
                    value: super::config::bounded(path),
                    reason: "is longer than PATH_MAX (4096 bytes)",
                });
            }
            let netns = netns.map(PathBuf::from);
            (id, ifname, netns)
        } else {
            (String::new(), String::new(), None)
        };
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// Linux's limit on a path.
const PATH_MAX: usize = 4096;

/// The longest container id taken (runtimes use 64 hex digits): it is echoed
/// in the IPAM store, the agent's registrations and logs.
pub const CONTAINER_ID_MAX: usize = 1024;

/// Linux's rules for interface names (`dev_valid_name`), and no `%`: the
/// kernel would take the name for a template (`eth%d`) and pick another.
pub fn validate_ifname(name: &str) -> Result<(), EnvError> {
    let bad = |reason| {
        Err(EnvError::Invalid {
            var: "CNI_IFNAME",
            value: super::config::bounded(name),
            reason,
        })
    };
    if name.len() > 15 {
        return bad("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("is not a valid interface name");
    }
    if name.contains('%') {
        return bad("contains '%' (the kernel takes such a name for a template)");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("contains '/', ':' or whitespace");
    }
    Ok(())
}

fn parse_args(raw: &str) -> Result<CniArgs, EnvError> {
    let mut args = CniArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(EnvError::Invalid {
                var: "CNI_ARGS",
                value: super::config::bounded(raw),
                reason: "must be KEY=VALUE pairs separated by ';'",
            });
        };
        match k {
            "K8S_POD_NAMESPACE" => args.pod_namespace = Some(v.to_owned()),
            "K8S_POD_NAME" => args.pod_name = Some(v.to_owned()),
            "K8S_POD_UID" => args.pod_uid = Some(v.to_owned()),
            // Passed by kubelet/CRI runtimes; of no use to us.
            "K8S_POD_INFRA_CONTAINER_ID" => {}
            "IgnoreUnknown" => ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true"),
            other => unknown.push(super::config::bounded(other)),
        }
    }
    match unknown.into_iter().next() {
        Some(k) if !ignore_unknown => Err(EnvError::UnknownArg(k)),
        _ => Ok(args),
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, EnvError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;FOO=bar",
        ),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    fn without(var: &str, command: &str) -> Vec<(&'static str, String)> {
        FULL.iter()
            .filter(|(k, _)| *k != var)
            .map(|(k, v)| {
                (
                    *k,
                    if *k == "CNI_COMMAND" {
                        command.to_owned()
                    } else {
                        v.to_string()
                    },
                )
            })
            .collect()
    }

    fn env_owned(pairs: &[(&'static str, String)]) -> Result<Env, EnvError> {
        let m: HashMap<&str, String> = pairs.iter().cloned().collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn full_add_env() {
        let e = env(FULL).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.args.pod_name.as_deref(), Some("web"));
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn required_variables_per_verb() {
        assert!(matches!(env(&[]), Err(EnvError::MissingCommand)));
        assert!(matches!(
            env(&[("CNI_COMMAND", "FROB")]),
            Err(EnvError::UnknownCommand(_))
        ));
        for verb in ["ADD", "CHECK", "DEL"] {
            assert!(env_owned(&without("CNI_CONTAINERID", verb)).is_err(), "{verb}");
            assert!(env_owned(&without("CNI_IFNAME", verb)).is_err(), "{verb}");
        }
        assert!(env_owned(&without("CNI_NETNS", "ADD")).is_err());
        assert!(env_owned(&without("CNI_NETNS", "CHECK")).is_err());
        assert!(env_owned(&without("CNI_NETNS", "DEL")).unwrap().netns.is_none());
        for verb in ["VERSION", "STATUS", "GC"] {
            assert!(env(&[("CNI_COMMAND", verb)]).is_ok(), "{verb}");
        }
    }

    #[test]
    fn invalid_values() {
        let with = |k: &'static str, v: &str| {
            let mut p: Vec<(&'static str, String)> = FULL
                .iter()
                .filter(|(kk, _)| *kk != k)
                .map(|(a, b)| (*a, b.to_string()))
                .collect();
            p.push((k, v.to_owned()));
            env_owned(&p)
        };
        assert!(with("CNI_CONTAINERID", "-abc").is_err());
        assert!(with("CNI_CONTAINERID", "a/b").is_err());
        assert!(with("CNI_IFNAME", "a-very-long-interface").is_err());
        assert!(with("CNI_IFNAME", "..").is_err());
        assert!(with("CNI_IFNAME", "et h0").is_err());
        assert!(with("CNI_IFNAME", "a/b").is_err());
        assert!(with("CNI_IFNAME", "eth%d").is_err());
        assert!(with("CNI_CONTAINERID", &"a".repeat(300)).is_ok());
        assert!(with("CNI_CONTAINERID", &"a".repeat(CONTAINER_ID_MAX + 1)).is_err());
        assert!(matches!(
            with("CNI_ARGS", "FOO=bar"),
            Err(EnvError::UnknownArg(_))
        ));
        assert!(with("CNI_ARGS", "novalue").is_err());
        assert!(with("CNI_ARGS", "K8S_POD_NAME=x;K8S_POD_UID=u").is_ok());
    }
}
