//! `bulkhead run --config FILE`: the same fields as the flags, in a JSON object.
//!
//! ```json
//! { "memory": 512, "cpus": 2, "disk": ["path=/var/vm/root.img", "path=/var/vm/data.img,readonly=on"],
//!   "net": ["auto,mac=52:54:00:12:34:56"], "console": "pty", "transport": "pci" }
//! ```
//! Each field is a flag of `bulkhead run` (`report_stats` and `report-stats` both work),
//! a string or number is its value, `true` sets a switch, and an array repeats a flag that
//! can be repeated. The file's fields come first, so flags given on the command line beside
//! `--config` override single values and add to lists. Each value is checked by the command
//! line's own parser as it is read, so a bad one is refused naming the file and the field
//! (`"transport": "isa"`: the transports are mmio and pci).

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;

use clap::{ArgAction, CommandFactory, Parser};
use serde_json::Value;

/// Replaces `--config FILE` (or `--config=FILE`) in `bulkhead run`'s arguments `args` (the
/// ones after `run`) with the flags the file holds.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut files = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            let file = it.next().ok_or("--config needs a file")?;
            files.push(file);
        } else if let Some(f) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            files.push(f.into());
        } else {
            rest.push(a);
        }
    }
    let given = |flag: &str| {
        rest.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        })
    };
    let mut out = Vec::new();
    for file in files {
        for f in flags_of(Path::new(&file))? {
            // A single-valued flag on the command line overrides the file's.
            if f.repeatable || !given(&f.flag) {
                out.push(OsString::from(f.flag));
                out.extend(f.value.map(OsString::from));
            }
        }
    }
    out.extend(rest);
    Ok(out)
}

/// One flag a config file stands for.
struct Flag {
    flag: String,
    value: Option<String>,
    repeatable: bool,
}

/// The flags config file `path` stands for.
fn flags_of(path: &Path) -> Result<Vec<Flag>, String> {
    let at = |what: String| format!("config file {}: {what}", path.display());
    // A path the user names, opened as root: under the same rule as disks and kernels.
    let mut text = String::new();
    crate::safe_open::open(path, crate::safe_open::Access::Read)
        .map_err(|e| format!("config file {}", crate::run::chain(&e)))?
        .read_to_string(&mut text)
        .map_err(|e| at(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| at(format!("not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(at("expected a JSON object of `bulkhead run` flags".into()));
    };
    let cmd = crate::cli::Cli::command();
    let run = cmd.find_subcommand("run").ok_or("no run subcommand")?;
    let mut flags = Vec::new();
    for (key, value) in fields {
        let name = key.replace('_', "-");
        let arg = run
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| {
                let known: Vec<_> = run
                    .get_arguments()
                    .filter(|a| !a.is_hide_set())
                    .filter_map(|a| a.get_long())
                    .filter(|l| *l != "config" && *l != "help")
                    .collect();
                at(format!(
                    "unknown field {key:?} (the fields are: {})",
                    known.join(", ")
                ))
            })?;
        let flag = format!("--{name}");
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let scalar = |v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(at(format!(
                "field {key:?}: expected a string or a number, not {v}"
            ))),
        };
        match value {
            Value::Null => {}
            Value::Bool(b) if switch => {
                if b {
                    flags.push(Flag {
                        flag,
                        value: None,
                        repeatable,
                    });
                }
            }
            Value::Array(items) if repeatable => {
                for item in &items {
                    flags.push(Flag {
                        flag: flag.clone(),
                        value: Some(scalar(item)?),
                        repeatable,
                    });
                }
            }
            v if switch => {
                return Err(at(format!(
                    "field {key:?}: expected true or false, not {v}"
                )))
            }
            Value::Array(_) => {
                return Err(at(format!("field {key:?}: takes one value, not a list")))
            }
            v => flags.push(Flag {
                flag,
                value: Some(scalar(&v)?),
                repeatable,
            }),
        }
    }
    for f in &flags {
        check_value(f).map_err(at)?;
    }
    Ok(flags)
}

/// Whether `bulkhead run` takes `f` on its own (the command line's parser, so a file
/// accepts exactly what a flag does); the parser's complaint, without its help footer.
fn check_value(f: &Flag) -> Result<(), String> {
    let mut argv = vec![OsString::from("bulkhead"), "run".into(), (&f.flag).into()];
    argv.extend(f.value.iter().map(OsString::from));
    match crate::cli::Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let why = first.strip_prefix("error: ").unwrap_or(first);
            Err(format!(
                "field {:?}: {why}",
                f.flag.trim_start_matches("--")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tag: &str, text: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("bulkhead-config-{tag}-{}.json", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn fields_become_flags_before_the_command_line() {
        let p = write(
            "ok",
            r#"{"memory": 512, "disk": ["path=/a.img", "path=/b.img,readonly=on"],
                "console": "pty", "report_stats": true, "initrd": null}"#,
        );
        let args = expand(os(&["--config", p.to_str().unwrap(), "--memory", "64"])).unwrap();
        let _ = std::fs::remove_file(&p);
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        // serde_json keeps keys sorted.
        assert_eq!(
            args,
            [
                "--console",
                "pty",
                "--disk",
                "path=/a.img",
                "--disk",
                "path=/b.img,readonly=on",
                "--report-stats",
                "--memory",
                "64"
            ]
        );
        // The command line's --memory replaced the file's; the parser takes the rest.
        let mut argv = os(&["bulkhead", "run"]);
        argv.extend(args.iter().map(OsString::from));
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(r) => {
                assert_eq!(r.memory, 64);
                assert_eq!(r.disk.len(), 2);
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn transport_is_a_field() {
        use bulkhead_vmm::config::Transport;
        for (name, want) in [("pci", Transport::Pci), ("mmio", Transport::Mmio)] {
            let p = write(
                &format!("transport-{name}"),
                &format!(r#"{{"transport": "{name}", "memory": 64}}"#),
            );
            let args = expand(os(&["--config", p.to_str().unwrap()])).unwrap();
            let _ = std::fs::remove_file(&p);
            let mut argv = os(&["bulkhead", "run"]);
            argv.extend(args);
            match crate::cli::Cli::try_parse_from(argv).unwrap().command {
                crate::cli::Command::Run(r) => assert_eq!((r.transport, r.memory), (want, 64)),
                _ => unreachable!(),
            }
        }
        // The command line's --transport overrides the file's.
        let p = write("transport-override", r#"{"transport": "pci"}"#);
        let args = expand(os(&["--config", p.to_str().unwrap(), "--transport=mmio"])).unwrap();
        let _ = std::fs::remove_file(&p);
        assert_eq!(args, os(&["--transport=mmio"]));
    }

    #[test]
    fn restart_policies_are_fields() {
        use crate::restart::RestartPolicy;
        let p = write(
            "restart",
            r#"{"restart_on_sigsys": true, "disk": ["path=/a.img,restart=off"],
                "net": ["auto,restart=2/30"], "console": "pty,restart=1"}"#,
        );
        let args = expand(os(&["--config", p.to_str().unwrap()])).unwrap();
        let _ = std::fs::remove_file(&p);
        let mut argv = os(&["bulkhead", "run"]);
        argv.extend(args);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(r) => {
                assert!(r.restart_on_sigsys);
                assert_eq!(r.disk[0].restart, RestartPolicy::Off);
                assert_eq!(
                    r.net[0].restart,
                    RestartPolicy::Budget {
                        restarts: 2,
                        window_secs: 30
                    }
                );
                assert_eq!(r.console.map(|c| c.1.to_string()), Some("1/60".into()));
            }
            _ => unreachable!(),
        }
        let p = write("restart-bad", r#"{"disk": ["path=/a.img,restart=always"]}"#);
        let e = expand(os(&["--config", p.to_str().unwrap()]))
            .and_then(|args| {
                let mut argv = os(&["bulkhead", "run"]);
                argv.extend(args);
                crate::cli::Cli::try_parse_from(argv)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .unwrap_err();
        let _ = std::fs::remove_file(&p);
        assert!(e.contains("restart=always"), "{e}");
    }

    #[test]
    fn bad_files_say_what_and_where() {
        for (tag, text, why) in [
            (
                "unknown",
                r#"{"colour": "red"}"#,
                "unknown field \"colour\"",
            ),
            ("notjson", "memory = 5", "not JSON"),
            ("array", "[1]", "expected a JSON object"),
            ("list", r#"{"memory": [1, 2]}"#, "takes one value"),
            (
                "switch",
                r#"{"report_stats": "yes"}"#,
                "expected true or false",
            ),
            (
                "object",
                r#"{"kernel": {"path": "x"}}"#,
                "expected a string or a number",
            ),
            (
                "transport",
                r#"{"transport": "isa"}"#,
                "field \"transport\": invalid value 'isa'",
            ),
            (
                "transport-number",
                r#"{"transport": 1}"#,
                "expected mmio or pci",
            ),
            ("memory-word", r#"{"memory": "lots"}"#, "field \"memory\""),
            (
                "disk-value",
                r#"{"disk": ["readonly=on"]}"#,
                "field \"disk\"",
            ),
        ] {
            let p = write(tag, text);
            let e = expand(os(&["--config", p.to_str().unwrap()])).unwrap_err();
            let _ = std::fs::remove_file(&p);
            assert!(
                e.contains(why) && e.contains(p.to_str().unwrap()),
                "{tag}: {e}"
            );
        }
        let e = expand(os(&["--config", "/nonexistent/vm.json"])).unwrap_err();
        assert!(e.contains("/nonexistent/vm.json"), "{e}");
        assert!(expand(os(&["--config"])).is_err());
    }
}
