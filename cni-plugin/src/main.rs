//! The binary a container runtime executes: read stdin, run the verb, print the
//! result or the spec's error JSON. Never a panic on stdout's side: even a bug is
//! reported as an error object.

use std::{
    io::{Read as _, Write as _},
    panic::{AssertUnwindSafe, catch_unwind},
    process::ExitCode,
};

use weir_cni::{
    commands,
    error::codes,
    spec::{Version, config, error_json},
};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = config::peek_version(&stdin).unwrap_or(Version::LATEST);
    let outcome = match read {
        Err(e) => Err((codes::IO, format!("reading stdin: {e}"), String::new())),
        Ok(_) => match catch_unwind(AssertUnwindSafe(|| commands::dispatch(&stdin))) {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err((e.code(), e.to_string(), e.details())),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err((codes::INTERNAL, format!("weir-cni bug: {what}"), String::new()))
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(value)) => {
            if writeln!(stdout, "{value}").is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err((code, msg, details)) => {
            let _ = writeln!(stdout, "{}", error_json(version, code, &msg, &details));
            ExitCode::FAILURE
        }
    }
}
