//! The kernel command line: copied out of guest memory, then parsed.
//!
//! Tokens are separated by spaces; the guest reads `bulkhead.test=<name>[,<name>...]`
//! (repeatable; the scenarios run in the order given) and `bulkhead.cpus=<n>`, and ignores
//! every other token (`console=ttyS0`, `virtio_mmio.device=...`, ...).

use crate::escape::Escaped;
use crate::scenario::{Scenario, ScenarioList};
use core::fmt;

/// Longest command line, NUL included (x86 `COMMAND_LINE_SIZE`).
pub const MAX_LEN: usize = 2048;

/// What the command line asks of the guest.
pub struct Config {
    /// `bulkhead.test=`: the scenarios to run; `None` = the default self-test.
    pub scenarios: Option<ScenarioList>,
    /// `bulkhead.cpus=`: how many CPUs must come up.
    pub cpus: Option<u32>,
}

/// A command line the guest cannot act on (exit status 2).
#[derive(Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A `bulkhead.test` name that is not a scenario.
    UnknownScenario(&'a [u8]),
    /// A `bulkhead.cpus` value that is not a decimal number.
    BadCpus(&'a [u8]),
    /// More scenario names than [`ScenarioList`] holds.
    TooManyScenarios,
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownScenario(name) => write!(f, "unknown scenario \"{}\"", Escaped(name)),
            Self::BadCpus(v) => write!(f, "bad bulkhead.cpus value \"{}\"", Escaped(v)),
            Self::TooManyScenarios => write!(
                f,
                "more than {} scenarios in bulkhead.test",
                ScenarioList::CAPACITY
            ),
        }
    }
}

fn parse_decimal(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u32, |n, &c| {
        let digit = char::from(c).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// Parse the command line.
pub fn parse(line: &[u8]) -> Result<Config, CmdlineError<'_>> {
    let mut config = Config {
        scenarios: None,
        cpus: None,
    };
    for token in line
        .split(|c| c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        if let Some(names) = token.strip_prefix(b"bulkhead.test=") {
            let list = config.scenarios.get_or_insert_with(ScenarioList::new);
            for name in names.split(|&c| c == b',') {
                let scenario =
                    Scenario::from_name(name).ok_or(CmdlineError::UnknownScenario(name))?;
                list.push(scenario)
                    .map_err(|_| CmdlineError::TooManyScenarios)?;
            }
        } else if let Some(value) = token.strip_prefix(b"bulkhead.cpus=") {
            config.cpus = Some(parse_decimal(value).ok_or(CmdlineError::BadCpus(value))?);
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenarios(line: &str) -> Option<Vec<Scenario>> {
        let config = parse(line.as_bytes()).expect("valid command line");
        config.scenarios.map(|l| l.as_slice().to_vec())
    }

    #[test]
    fn no_bulkhead_test_means_the_default() {
        assert_eq!(scenarios(""), None);
        assert_eq!(scenarios("console=ttyS0 reboot=k panic=1 pci=off"), None);
        assert_eq!(parse(b"console=ttyS0").unwrap().cpus, None);
    }

    #[test]
    fn scenarios_in_order_across_tokens() {
        assert_eq!(
            scenarios("a=b bulkhead.test=memory,fail\tbulkhead.test=cpus x"),
            Some(vec![Scenario::Memory, Scenario::Fail, Scenario::Cpus])
        );
        assert_eq!(
            scenarios("bulkhead.test=cpus,cpus"),
            Some(vec![Scenario::Cpus, Scenario::Cpus])
        );
    }

    #[test]
    fn cpus_is_decimal() {
        assert_eq!(parse(b"bulkhead.cpus=4").unwrap().cpus, Some(4));
        assert_eq!(
            parse(b"bulkhead.cpus=254 bulkhead.cpus=2").unwrap().cpus,
            Some(2)
        );
        for bad in [
            "bulkhead.cpus=",
            "bulkhead.cpus=x2",
            "bulkhead.cpus=-1",
            "bulkhead.cpus=99999999999",
        ] {
            let value = &bad.as_bytes()["bulkhead.cpus=".len()..];
            assert_eq!(
                parse(bad.as_bytes()).err(),
                Some(CmdlineError::BadCpus(value)),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_and_empty_names_are_errors() {
        let e = parse(b"console=ttyS0 bulkhead.test=cpus,bogus")
            .err()
            .unwrap();
        assert_eq!(e, CmdlineError::UnknownScenario(b"bogus"));
        assert_eq!(e.to_string(), r#"unknown scenario "bogus""#);
        let e = parse(b"bulkhead.test=").err().unwrap();
        assert_eq!(e.to_string(), r#"unknown scenario """#);
        let e = parse(b"bulkhead.test=a\"b").err().unwrap();
        assert_eq!(e.to_string(), r#"unknown scenario "a\x22b""#);
    }

    #[test]
    fn the_list_has_a_limit() {
        let mut line = String::from("bulkhead.test=fail");
        for _ in 1..ScenarioList::CAPACITY {
            line.push_str(",fail");
        }
        assert!(parse(line.as_bytes()).is_ok());
        line.push_str(",fail");
        assert_eq!(
            parse(line.as_bytes()).err(),
            Some(CmdlineError::TooManyScenarios)
        );
    }

    #[test]
    fn similar_prefixes_are_not_ours() {
        assert_eq!(scenarios("xbulkhead.test=bogus bulkhead.tests=bogus"), None);
    }
}
