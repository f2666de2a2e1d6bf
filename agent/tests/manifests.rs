//! `manifests/` (no root needed): every object parses strictly into its
//! `k8s-openapi` type (a field the type does not know fails); the ClusterRole
//! grants exactly what the watchers use; the DaemonSet's command, settings,
//! mounts, probes and ports agree with the agent's command line.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::{CommandFactory as _, Parser as _};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use weir_agent::{
    cli::{Cli, Command, RunArgs},
    source::{SourceSpec, kube::WATCHED},
};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every document of every file `kubectl apply -f manifests/` reads.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("manifests/")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let values: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file.file_name().expect("name").to_string_lossy().into_owned();
        docs.extend(
            values
                .into_iter()
                .filter(|v| !v.is_null())
                .map(|v| (name.clone(), v)),
        );
    }
    docs
}

/// `value` as a `T`, failing on anything `T` does not hold: what does not
/// survive the round trip through the type was unknown to it.
fn strict<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).expect("serialise");
    let mut lost = Vec::new();
    differences("", value, &back, &mut lost);
    assert!(
        lost.is_empty(),
        "{file}: fields the API does not know (or of the wrong type): {lost:?}"
    );
    typed
}

fn differences(path: &str, written: &Value, known: &Value, out: &mut Vec<String>) {
    match (written, known) {
        (Value::Object(w), Value::Object(k)) => {
            for (key, v) in w {
                match k.get(key) {
                    Some(kv) => differences(&format!("{path}.{key}"), v, kv, out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(w), Value::Array(k)) if w.len() == k.len() => {
            for (i, (w, k)) in w.iter().zip(k).enumerate() {
                differences(&format!("{path}[{i}]"), w, k, out);
            }
        }
        (w, k) if w == k => {}
        (w, k) => out.push(format!("{path}: {w} became {k}")),
    }
}

fn one<T: DeserializeOwned + Serialize>(kind: &str) -> T {
    let docs: Vec<(String, Value)> = documents()
        .into_iter()
        .filter(|(_, v)| v["kind"] == kind)
        .collect();
    assert_eq!(docs.len(), 1, "one {kind} in manifests/");
    strict(&docs[0].0, &docs[0].1)
}

#[test]
fn every_manifest_parses_strictly_and_lives_in_kube_system() {
    let mut kinds = BTreeSet::new();
    for (file, doc) in documents() {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: a document without kind"));
        match kind {
            "ServiceAccount" => drop(strict::<ServiceAccount>(&file, &doc)),
            "ClusterRole" => drop(strict::<ClusterRole>(&file, &doc)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&file, &doc)),
            "ConfigMap" => drop(strict::<ConfigMap>(&file, &doc)),
            "DaemonSet" => drop(strict::<DaemonSet>(&file, &doc)),
            other => panic!("{file}: a {other} this test does not check"),
        }
        if !kind.starts_with("Cluster") {
            assert_eq!(doc["metadata"]["namespace"], "kube-system", "{file}: {kind}");
        }
        kinds.insert(kind.to_owned());
    }
    assert_eq!(kinds.len(), 5, "{kinds:?}");
}

#[test]
fn the_cluster_role_grants_exactly_what_the_watchers_use() {
    let role: ClusterRole = one("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = WATCHED
        .iter()
        .flat_map(|w| {
            ["get", "list", "watch"].map(|v| (w.group.to_owned(), w.resource.to_owned(), v.to_owned()))
        })
        .collect();
    assert_eq!(
        granted, wanted,
        "the ClusterRole must grant get, list and watch on what is watched, and nothing else"
    );

    let binding: ClusterRoleBinding = one("ClusterRoleBinding");
    let account: ServiceAccount = one("ServiceAccount");
    let daemonset: DaemonSet = one("DaemonSet");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().expect("name"));
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
    let pod = daemonset.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name, account.metadata.name);
}

/// The DaemonSet's pod and its containers by name.
fn pod() -> (k8s_openapi::api::core::v1::PodSpec, BTreeMap<String, Container>) {
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let containers = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .map(|c| (c.name.clone(), c.clone()))
        .collect();
    (pod, containers)
}

/// The agent's command line as the DaemonSet runs it: its command and
/// arguments, and each variable of its environment (the ConfigMap's, then its
/// own) as the flag that reads it.
fn agent_args(agent: &Container, config: &ConfigMap) -> RunArgs {
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run");
    let flag_of = |var: &str| {
        run.get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var))
            .and_then(|a| a.get_long())
            .map(str::to_owned)
    };
    let mut argv: Vec<String> = agent.command.clone().unwrap_or_default();
    argv.extend(agent.args.clone().unwrap_or_default());
    let mut env: Vec<(String, String)> = config.data.clone().unwrap_or_default().into_iter().collect();
    for e in agent.env.iter().flatten() {
        if let Some(v) = &e.value {
            env.push((e.name.clone(), v.clone()));
        } else {
            assert_eq!(
                e.name, "NODE_NAME",
                "only the node's name comes from elsewhere: {e:?}"
            );
        }
    }
    for (var, value) in env {
        // The in-cluster client's: where the API server is, without kube-proxy.
        if var.starts_with("KUBERNETES_SERVICE_") {
            continue;
        }
        let flag =
            flag_of(&var).unwrap_or_else(|| panic!("{var} is no flag's variable (weir-agent run --help)"));
        argv.push(format!("--{flag}={value}"));
    }
    argv.push("--node=node-1".into());
    match Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .command
    {
        Command::Run(args) => *args,
        _ => panic!("the agent container does not run `weir-agent run`: {argv:?}"),
    }
}

/// The host path a container sees at `path` (through the longest mount).
fn host_path(pod: &k8s_openapi::api::core::v1::PodSpec, c: &Container, path: &Path) -> Option<PathBuf> {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name)?;
    let host = &volume.host_path.as_ref()?.path;
    Some(Path::new(host).join(path.strip_prefix(&mount.mount_path).ok()?))
}

fn probe_port(p: Option<&k8s_openapi::api::core::v1::Probe>) -> (Option<String>, IntOrString, String) {
    let get = p.and_then(|p| p.http_get.clone()).expect("an HTTP probe");
    (get.host, get.port, get.path.unwrap_or_default())
}

#[test]
fn the_daemonset_agrees_with_the_agents_command_line() {
    let (pod, containers) = pod();
    let config: ConfigMap = one("ConfigMap");
    let agent = &containers["agent"];
    let args = agent_args(agent, &config);
    assert_eq!(args.source, Some(SourceSpec::Kube));
    assert!(pod.host_network == Some(true));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint"
    );

    // Probes on the health address, ports where the agent listens.
    let health = args.health_address.0.expect("health served");
    for (probe, path) in [
        (agent.startup_probe.as_ref(), "/healthz"),
        (agent.liveness_probe.as_ref(), "/healthz"),
        (agent.readiness_probe.as_ref(), "/readyz"),
    ] {
        let (host, port, got) = probe_port(probe);
        assert_eq!(got, path);
        assert_eq!(host, Some(health.ip().to_string()));
        assert_eq!(port, IntOrString::Int(i32::from(health.port())));
    }
    let ports: BTreeMap<String, i32> = agent
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports.get("metrics").copied(),
        args.metrics_address.0.map(|a| i32::from(a.port()))
    );
    assert_eq!(
        ports.get("proxy-healthz").copied(),
        args.kube_proxy_healthz_address.0.map(|a| i32::from(a.port()))
    );

    // What the agent reads and writes is the host's, at the same paths where
    // weir-cni and the runtime on the host look for them.
    let same_on_host = |what: &str, path: &Path| {
        assert_eq!(
            host_path(&pod, agent, path).as_deref(),
            Some(path),
            "{what}: {}",
            path.display()
        );
    };
    same_on_host("the pin root", &args.bpffs_root);
    same_on_host("the CNI socket", &args.cni_socket);
    let conf = PathBuf::from(args.cni_conf_file.clone().expect("a conflist"));
    same_on_host("the conflist", &conf);
    same_on_host("the CNI bin directory", &args.cni_bin_dir);
    let cgroup = args.cgroup_root.clone().expect("the host's cgroup root");
    assert_eq!(
        host_path(&pod, agent, &cgroup).as_deref(),
        Some(Path::new("/sys/fs/cgroup"))
    );
    let bpffs_mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| args.bpffs_root.starts_with(&m.mount_path));
    assert_eq!(
        bpffs_mount.and_then(|m| m.mount_propagation.as_deref()),
        Some("HostToContainer")
    );

    // The init containers: bpffs mounted where the pins go, shared back to the
    // host; weir-cni installed where the agent (and the kubelet) look.
    let init: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["mount-bpffs", "install-cni"]);
    let mount = &containers["mount-bpffs"];
    match Cli::try_parse_from(mount.command.clone().unwrap_or_default())
        .expect("mount-bpffs")
        .command
    {
        Command::MountBpffs { path } => {
            assert!(args.bpffs_root.starts_with(&path));
            assert_eq!(host_path(&pod, mount, &path), host_path(&pod, agent, &path));
            let m = mount
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| path.starts_with(&m.mount_path))
                .expect("mounted");
            assert_eq!(m.mount_propagation.as_deref(), Some("Bidirectional"));
            assert_eq!(
                mount.security_context.as_ref().and_then(|s| s.privileged),
                Some(true),
                "Bidirectional needs it"
            );
        }
        _ => panic!("mount-bpffs runs something else"),
    }
    let install = &containers["install-cni"];
    match Cli::try_parse_from(install.command.clone().unwrap_or_default())
        .expect("install-cni")
        .command
    {
        Command::InstallCni { from, to } => {
            assert_eq!(from.as_deref(), Some(Path::new("/usr/bin/weir-cni")));
            assert_eq!(
                host_path(&pod, install, &to),
                host_path(&pod, agent, &args.cni_bin_dir)
            );
        }
        _ => panic!("install-cni runs something else"),
    }
    let images: BTreeSet<&str> = containers.values().filter_map(|c| c.image.as_deref()).collect();
    assert_eq!(images.len(), 1, "one image for every container: {images:?}");

    // Not privileged: precise capabilities.
    let sc = agent.security_context.clone().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    for cap in ["BPF", "NET_ADMIN", "PERFMON"] {
        assert!(added.contains(cap), "{cap} missing: {added:?}");
    }
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
}

/// Each setting given alone (to name the one that fails) to the agent's
/// container, as the ConfigMap would: a flag's variable, its value parsing.
fn each_alone_parses(settings: impl IntoIterator<Item = (String, String)>) {
    let (_, containers) = pod();
    let config: ConfigMap = one("ConfigMap");
    let mut agent = containers["agent"].clone();
    agent.env = None;
    for (key, value) in settings {
        let one = ConfigMap {
            data: Some([(key, value)].into_iter().collect()),
            ..config.clone()
        };
        let _ = agent_args(&agent, &one);
    }
}

#[test]
fn every_configmap_setting_is_a_flag_and_parses() {
    let config: ConfigMap = one("ConfigMap");
    each_alone_parses(config.data.unwrap_or_default());
}

/// The settings the ConfigMap shows commented out (`# WEIR_X: value`), as a
/// user uncomments them: each a flag's variable, its example value parsing.
#[test]
fn every_commented_configmap_example_is_a_flag_and_parses() {
    let text = std::fs::read_to_string(manifests_dir().join("configmap.yaml")).expect("configmap.yaml");
    let examples: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("# WEIR_"))
        .filter_map(|rest| rest.split_once(": "))
        .map(|(name, value)| (format!("WEIR_{name}"), value.trim().trim_matches('"').to_owned()))
        .collect();
    assert!(examples.len() >= 5, "the examples are found: {examples:?}");
    each_alone_parses(examples);
}
