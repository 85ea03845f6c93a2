//! The ext4 image the disk test's guest mounts: made on the host with `mkfs.ext4 -d`, read
//! back with `debugfs` and checked with `e2fsck` (package e2fsprogs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Size of the filesystem.
const SIZE: &str = "64M";

/// An ext4 image at a fresh temporary path, removed when dropped.
pub struct Ext4Image {
    /// Its path (the `--disk path=`).
    pub path: PathBuf,
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `mkfs.ext4`, `debugfs` and `e2fsck` can be run; `Err` names what is missing.
pub fn tools() -> Result<(), String> {
    for tool in ["mkfs.ext4", "debugfs", "e2fsck"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/sbin").join(tool).is_file()
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return Err(format!("{tool} is not installed (package e2fsprogs)"));
        }
    }
    Ok(())
}

/// Runs `program` (from `$PATH` or the sbin directories, where e2fsprogs lives).
fn command(program: &str) -> Command {
    let path = ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program));
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null());
    cmd
}

fn output(cmd: &mut Command, what: &str) -> Result<Output, String> {
    cmd.output()
        .map_err(|e| format!("{what}: running {:?}: {e}", cmd.get_program()))
}

impl Ext4Image {
    /// A filesystem whose root holds `files` (name, contents), made by `mkfs.ext4 -d`.
    pub fn new(tag: &str, files: &[(&str, &str)]) -> Result<Ext4Image, String> {
        let base = std::env::temp_dir().join(format!("bulkhead-{tag}-{}", std::process::id()));
        let dir = base.with_extension("root");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let made = (|| {
            for (name, text) in files {
                std::fs::write(dir.join(name), text)
                    .map_err(|e| format!("writing {name} into {}: {e}", dir.display()))?;
            }
            let image = Ext4Image {
                path: base.with_extension("ext4"),
            };
            let out = output(
                command("mkfs.ext4")
                    .args(["-q", "-F", "-L", "bulkhead", "-d"])
                    .arg(&dir)
                    .arg(&image.path)
                    .arg(SIZE),
                "making the ext4 image",
            )?;
            if !out.status.success() {
                return Err(format!(
                    "mkfs.ext4 -d {} {}: {}: {}",
                    dir.display(),
                    image.path.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(image)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        made
    }

    /// The contents of `/name` in the filesystem, read by `debugfs -R 'cat /name'`.
    pub fn cat(&self, name: &str) -> Result<String, String> {
        let request = format!("cat /{name}");
        let out = output(
            command("debugfs").arg("-R").arg(&request).arg(&self.path),
            "reading the ext4 image",
        )?;
        // debugfs prints its version on stderr and exits 0 even when the file is missing:
        // any other stderr line is the error.
        let complaints: Vec<_> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if !out.status.success() || !complaints.is_empty() {
            return Err(format!(
                "debugfs -R '{request}' {}: {}: {}",
                self.path.display(),
                out.status,
                complaints.join(" / ")
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `/name` holding `text` with `debugfs -w`, as a guest would have (for checking
    /// [`Ext4Image::cat`] where no guest can).
    pub fn write(&self, name: &str, text: &str) -> Result<(), String> {
        let src = self.path.with_extension(name);
        std::fs::write(&src, text).map_err(|e| format!("writing {}: {e}", src.display()))?;
        let request = format!("write {} {name}", src.display());
        let out = output(
            command("debugfs")
                .args(["-w", "-R", &request])
                .arg(&self.path),
            "writing into the ext4 image",
        );
        let _ = std::fs::remove_file(&src);
        let out = out?;
        if !out.status.success() {
            return Err(format!("debugfs -w -R '{request}': {}", out.status));
        }
        Ok(())
    }

    /// `e2fsck -fn`: `Err` with its report unless the filesystem is clean.
    pub fn fsck(&self) -> Result<(), String> {
        let out = output(
            command("e2fsck").arg("-fn").arg(&self.path),
            "checking the ext4 image",
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "e2fsck -fn {}: {}:\n{}{}",
                self.path.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}
