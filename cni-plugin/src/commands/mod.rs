//! The verbs. `dispatch` reads the environment and configuration and runs one.

mod add;
mod check;
mod del;
mod gc;
mod ipam;
mod status;

use serde_json::Value;

use crate::{
    Error,
    spec::{Command, Env, NetConf, Version, config, version},
};

/// Runs the verb the environment names; `Some` is printed on stdout.
pub fn dispatch(stdin: &[u8]) -> Result<Option<Value>, Error> {
    let env = Env::from_process()?;
    if env.command == Command::Version {
        // VERSION needs no valid configuration: answer in the caller's version if
        // we can read it.
        let v = config::peek_version(stdin).unwrap_or(Version::LATEST);
        return Ok(Some(version::version_info(v)));
    }
    let version = config::parse_version(stdin)?;
    let verb_needs = |verb, ok: bool, needs| {
        if ok {
            Ok(())
        } else {
            Err(Error::VerbNotInVersion {
                verb,
                version: version.as_str(),
                needs,
            })
        }
    };
    match env.command {
        Command::Check => verb_needs("CHECK", version.has_check(), "0.4.0")?,
        Command::Status => verb_needs("STATUS", version.has_status_and_gc(), "1.1.0")?,
        Command::Gc => verb_needs("GC", version.has_status_and_gc(), "1.1.0")?,
        _ => {}
    }
    if env.command == Command::Status {
        return status::run(stdin).map(|()| None);
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add::run(&env, &conf, stdin).map(Some),
        Command::Del => del::run(&env, &conf, stdin).map(|()| None),
        Command::Check => check::run(&env, &conf, stdin).map(|()| None),
        Command::Gc => gc::run(&env, &conf, stdin).map(|()| None),
        Command::Version | Command::Status => Ok(None),
    }
}
