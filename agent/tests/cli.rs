//! The binaries' command lines where they need no root, run as the real
//! binaries: `weir-agent --log-format` (its log lines as log shippers read
//! them, through `install-cni`, the one command that logs without root) and
//! `weirctl completions` (what a shell completes with them).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// A fresh directory under the target's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("log-format-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// `weir-agent ARGS install-cni --from FROM --to DIR/bin`, with `env`.
fn install(dir: &Path, from: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir-agent"))
        .args(args)
        .arg("install-cni")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(dir.join("bin"))
        .env_remove("WEIR_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("running weir-agent")
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every line one JSON object; those lines.
fn json_lines(output: &Output) -> Vec<Value> {
    lines(output)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line_with_fields_at_the_top() {
    let dir = scratch("json");
    let from = dir.join("weir-cni");
    std::fs::write(&from, "binary").expect("write");
    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("WEIR_LOG_FORMAT", "json")][..]),
    ] {
        let out = install(&dir, &from, args, env);
        assert!(out.status.success(), "{args:?} {env:?}: {out:?}");
        let logs = json_lines(&out);
        let installed = logs
            .iter()
            .find(|l| l["message"] == "installed")
            .unwrap_or_else(|| panic!("no `installed` line: {logs:?}"));
        assert_eq!(installed["level"], "INFO");
        assert_eq!(installed["target"], "weir_agent");
        assert_eq!(installed["to"], dir.join("bin/weir-cni").display().to_string());
        assert!(
            installed["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{installed}"
        );
    }

    // A fatal error is a log line too, with its cause, and the exit status says so.
    let out = install(&dir, &dir.join("missing"), &["--log-format", "json"], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let logs = json_lines(&out);
    let fatal = logs.last().expect("a line");
    assert_eq!(fatal["level"], "ERROR");
    assert!(
        fatal["error"].as_str().is_some_and(|e| e.contains("missing")),
        "{fatal}"
    );
}

#[test]
fn text_logs_are_the_default_and_an_unknown_format_is_refused() {
    let dir = scratch("text");
    let from = dir.join("weir-cni");
    std::fs::write(&from, "binary").expect("write");
    let out = install(&dir, &from, &[], &[]);
    assert!(out.status.success(), "{out:?}");
    let text = lines(&out);
    assert!(
        text.iter()
            .any(|l| l.contains("INFO") && l.contains("installed") && !l.starts_with('{')),
        "{text:?}"
    );

    let out = install(&dir, &from, &["--log-format", "xml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("possible values: text, json"),
        "{out:?}"
    );
    assert!(
        !dir.join("bin/.weir-cni.tmp").exists(),
        "nothing done with a bad flag"
    );
}

/// `weirctl completions bash`, loaded into bash, completes `weirctl`'s
/// subcommands and flag values; zsh's and fish's scripts name the same.
#[test]
fn weirctl_completions_complete_its_subcommands_and_flags() {
    let script = |shell: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_weirctl"))
            .args(["completions", shell])
            .output()
            .expect("running weirctl");
        assert!(out.status.success(), "{shell}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let bash = script("bash");
    let dir = scratch("completions");
    let path = dir.join("weirctl.bash");
    std::fs::write(&path, &bash).expect("write");
    // What bash offers for `weirctl WORDS...` with the cursor on the last word.
    let complete = |words: &[&str]| -> Vec<String> {
        let cword = words.len() - 1;
        let prev = if cword > 0 { words[cword - 1] } else { "" };
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; _weirctl weirctl '{}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display(),
            quoted.join(" "),
            words[cword],
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &program])
            .output()
            .expect("running bash");
        assert!(out.status.success(), "{words:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(complete(&["weirctl", "ser"]), ["services"]);
    assert_eq!(complete(&["weirctl", "con"]), ["conntrack"]);
    let all = complete(&["weirctl", ""]);
    for sub in [
        "services",
        "backends",
        "conntrack",
        "policy",
        "drops",
        "completions",
    ] {
        assert!(all.iter().any(|w| w == sub), "{sub} missing from {all:?}");
    }
    assert_eq!(complete(&["weirctl", "services", "-o", ""]), ["table", "json"]);
    assert!(
        complete(&["weirctl", "--bpf"])
            .iter()
            .any(|w| w == "--bpffs-root")
    );

    for shell in ["zsh", "fish"] {
        let text = script(shell);
        for sub in ["services", "conntrack", "tunnels"] {
            assert!(text.contains(sub), "{shell}: no {sub}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_weirctl"))
        .args(["completions", "tcsh"])
        .output()
        .expect("running weirctl");
    assert_eq!(out.status.code(), Some(2), "an unknown shell is refused: {out:?}");
}
