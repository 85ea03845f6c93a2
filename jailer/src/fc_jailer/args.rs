//! Firecracker's jailer's flags, checked as it checks them: the id (letters, digits and
//! '-', at most 64), `--exec-file` (here: `bulkhead-firecracker` only), `--cgroup
//! FILE=VALUE`, `--resource-limit fsize=N|no-file=N`, `--cgroup-version 1|2`.

use std::ffi::OsString;
use std::path::PathBuf;

/// The only program this jailer starts.
pub const EXEC_NAME: &str = "bulkhead-firecracker";
/// Flags only Firecracker's jailer has (they select this mode).
pub const FC_ONLY: &[&str] = &[
    "--chroot-base-dir",
    "--daemonize",
    "--new-pid-ns",
    "--cgroup",
    "--cgroup-version",
    "--resource-limit",
    "--parent-cgroup",
];
/// Firecracker's jailer's default chroot base.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// Its longest id.
pub const MAX_ID_LEN: usize = 64;

/// A resource limit (`--resource-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    /// `fsize=N`: RLIMIT_FSIZE.
    Fsize(u64),
    /// `no-file=N`: RLIMIT_NOFILE.
    NoFile(u64),
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerArgs {
    pub id: String,
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    /// `--cgroup FILE=VALUE`, in order.
    pub cgroups: Vec<(String, String)>,
    pub cgroup_version: u8,
    pub parent_cgroup: Option<String>,
    pub rlimits: Vec<Rlimit>,
    /// After `--`: Firecracker's own arguments.
    pub fc_args: Vec<OsString>,
}

/// Parses `argv` (without the program name).
pub fn parse(argv: &[OsString]) -> Result<JailerArgs, String> {
    let split = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let fc_args = argv.get(split + 1..).unwrap_or_default().to_vec();
    let mut it = argv[..split].iter();
    let (mut id, mut exec, mut uid, mut gid) = (None, None, None, None);
    let mut out = JailerArgs {
        id: String::new(),
        exec_file: PathBuf::new(),
        uid: 0,
        gid: 0,
        chroot_base: DEFAULT_CHROOT_BASE.into(),
        netns: None,
        daemonize: false,
        new_pid_ns: false,
        cgroups: Vec::new(),
        cgroup_version: 1,
        parent_cgroup: None,
        rlimits: Vec::new(),
        fc_args,
    };
    while let Some(raw) = it.next() {
        let arg = raw
            .to_str()
            .ok_or_else(|| format!("argument {raw:?} is not UTF-8"))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .and_then(|v| v.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| format!("Argument '{name}' requires a value")),
            }
        };
        match name {
            "--id" => id = Some(value()?),
            "--exec-file" => exec = Some(PathBuf::from(value()?)),
            "--uid" => uid = Some(number(name, &value()?)?),
            "--gid" => gid = Some(number(name, &value()?)?),
            "--chroot-base-dir" => out.chroot_base = value()?.into(),
            "--netns" => out.netns = Some(value()?.into()),
            "--daemonize" => out.daemonize = true,
            "--new-pid-ns" => out.new_pid_ns = true,
            "--cgroup" => out.cgroups.push(cgroup_value(&value()?)?),
            "--cgroup-version" => {
                out.cgroup_version = match value()?.as_str() {
                    "1" => 1,
                    "2" => 2,
                    v => return Err(format!("Invalid cgroup version: {v}")),
                }
            }
            "--parent-cgroup" => out.parent_cgroup = Some(value()?),
            "--resource-limit" => out.rlimits.push(rlimit(&value()?)?),
            // Accepted and ignored: NUMA placement is not bulkhead's (see the README).
            "--node" => {
                value()?;
            }
            _ => {
                return Err(format!(
                    "Found argument '{arg}' which wasn't expected, or isn't valid in this context."
                ))
            }
        }
    }
    out.id = id.ok_or("Missing argument: id")?;
    out.exec_file = exec.ok_or("Missing argument: exec-file")?;
    out.uid = uid.ok_or("Missing argument: uid")?;
    out.gid = gid.ok_or("Missing argument: gid")?;
    check_id(&out.id)?;
    let name = out.exec_file.file_name().and_then(|n| n.to_str());
    if name != Some(EXEC_NAME) {
        return Err(format!(
            "--exec-file {}: this jailer starts only {EXEC_NAME} (Firecracker's API over bulkhead), not another program",
            out.exec_file.display()
        ));
    }
    if let Some(p) = &out.parent_cgroup {
        if p.split('/').any(|c| c == ".." || c == ".") || p.starts_with('/') {
            return Err(format!("Invalid parent cgroup: {p}"));
        }
    }
    Ok(out)
}

/// The id: letters, digits and '-', 1 to 64 of them.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "Invalid instance ID: {id:?}: 1 to {MAX_ID_LEN} characters"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "Invalid instance ID: {id:?}: character {c:?} not allowed"
        ));
    }
    Ok(())
}

fn number(name: &str, v: &str) -> Result<u32, String> {
    v.parse()
        .map_err(|_| format!("Argument '{name}': invalid value {v:?}"))
}

fn cgroup_value(v: &str) -> Result<(String, String), String> {
    let (file, value) = v
        .split_once('=')
        .ok_or_else(|| format!("Invalid cgroup argument: {v:?}: expected FILE=VALUE"))?;
    let ok_name = !file.is_empty()
        && file.contains('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
    if !ok_name || value.is_empty() || value.contains('\n') {
        return Err(format!("Invalid cgroup argument: {v:?}"));
    }
    Ok((file.to_owned(), value.to_owned()))
}

fn rlimit(v: &str) -> Result<Rlimit, String> {
    let (name, n) = v
        .split_once('=')
        .ok_or_else(|| format!("Invalid resource limit: {v:?}: expected NAME=VALUE"))?;
    let n: u64 = n
        .parse()
        .map_err(|_| format!("Invalid resource limit value: {v:?}"))?;
    match name {
        "fsize" => Ok(Rlimit::Fsize(n)),
        "no-file" => Ok(Rlimit::NoFile(n)),
        _ => Err(format!(
            "Invalid resource limit: {name:?} (fsize or no-file)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<JailerArgs, String> {
        parse(&s.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn containerd_style_line() {
        let a = p(&[
            "--id",
            "vm-1",
            "--exec-file",
            "/usr/bin/bulkhead-firecracker",
            "--uid",
            "123",
            "--gid",
            "100",
            "--chroot-base-dir",
            "/tmp/j",
            "--cgroup-version",
            "2",
            "--cgroup",
            "memory.max=1000000",
            "--resource-limit",
            "no-file=1024",
            "--daemonize",
            "--new-pid-ns",
            "--",
            "--api-sock",
            "/run/firecracker.socket",
        ])
        .unwrap();
        assert_eq!((a.uid, a.gid, a.cgroup_version), (123, 100, 2));
        assert_eq!(a.cgroups, vec![("memory.max".into(), "1000000".into())]);
        assert_eq!(a.rlimits, vec![Rlimit::NoFile(1024)]);
        assert_eq!(a.fc_args.len(), 2);
    }

    #[test]
    fn refusals() {
        let base = [
            "--exec-file",
            "/x/bulkhead-firecracker",
            "--uid",
            "1",
            "--gid",
            "1",
        ];
        let with = |extra: &[&str]| p(&[base.as_slice(), extra].concat());
        assert!(with(&["--id", "a_b"])
            .unwrap_err()
            .contains("Invalid instance ID"));
        assert!(with(&["--id", &"a".repeat(65)]).is_err());
        assert!(with(&["--id", "a", "--bogus"])
            .unwrap_err()
            .contains("wasn't expected"));
        assert!(with(&["--id", "a", "--cgroup", "x"]).is_err());
        assert!(with(&["--id", "a", "--resource-limit", "nproc=3"]).is_err());
        assert!(with(&["--id", "a", "--parent-cgroup", "../x"]).is_err());
        assert!(p(&[
            "--id",
            "a",
            "--exec-file",
            "/bin/sh",
            "--uid",
            "1",
            "--gid",
            "1"
        ])
        .unwrap_err()
        .contains("starts only"));
        assert!(p(&["--id", "a"]).unwrap_err().contains("Missing argument"));
    }
}
