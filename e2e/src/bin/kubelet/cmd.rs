//! External commands (`ip`, `unshare`, `mount`, …): found once at start-up, and every failure
//! reported with the full command line and its stderr.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

/// A failed external command.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("`{tool}` was not found in PATH or /usr/sbin:/sbin (install it; the kubelet needs it)")]
    NotFound { tool: &'static str },
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Absolute paths of the host tools the kubelet drives. Resolved once so that a container's
/// own `PATH` never changes which `mount` runs in its wrapper script.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub unshare: PathBuf,
    pub nsenter: PathBuf,
    /// bash, not any `sh`: dash drops environment variables whose names are not shell
    /// identifiers (`CFG_app.conf` from an envFrom prefix), and containers must get them.
    pub bash: PathBuf,
    pub mount: PathBuf,
    pub mkdir: PathBuf,
    pub env: PathBuf,
    pub setpriv: PathBuf,
    /// The machine's mount namespace when the kubelet runs in a slave copy of it, as it does
    /// under `ip netns exec`: pod network namespaces are named there, so that they propagate
    /// into ours and stay visible to `ip netns` on the machine (and to `down.sh`).
    pub host_mount_ns: Option<HostMountNs>,
}

impl Tools {
    pub fn find() -> Result<Self, CmdError> {
        Ok(Self {
            setpriv: which("setpriv")?,
            host_mount_ns: HostMountNs::find(),
            ip: which("ip")?,
            unshare: which("unshare")?,
            nsenter: which("nsenter")?,
            bash: which("bash")?,
            mount: which("mount")?,
            mkdir: which("mkdir")?,
            env: which("env")?,
        })
    }
}

/// An open handle on the machine's mount namespace, usable as `nsenter --mount=<path>` for as
/// long as the kubelet lives (even after the process we found it through has exited).
#[derive(Debug, Clone)]
pub struct HostMountNs {
    _handle: Arc<File>,
    pub path: PathBuf,
}

impl HostMountNs {
    /// The mount namespace of the nearest ancestor process whose `/run/netns` is shared and
    /// not a slave (where `ip netns add` on the machine puts its mounts); `None` when ours is
    /// that namespace already, or when no ancestor qualifies.
    fn find() -> Option<Self> {
        if netns_dir_is_master(&std::fs::read_to_string("/proc/self/mountinfo").ok()?) {
            return None;
        }
        let ours = std::fs::read_link("/proc/self/ns/mnt").ok()?;
        let mut pid = parent_of(std::process::id())?;
        while pid > 1 {
            let ns = format!("/proc/{pid}/ns/mnt");
            let differs = std::fs::read_link(&ns).is_ok_and(|theirs| theirs != ours);
            let master = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                .is_ok_and(|info| netns_dir_is_master(&info));
            if differs
                && master
                && let Ok(file) = File::open(&ns)
            {
                let path = PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    file.as_raw_fd()
                ));
                tracing::debug!(
                    pid,
                    "pod network namespaces are named in this process's mount namespace"
                );
                return Some(Self {
                    _handle: Arc::new(file),
                    path,
                });
            }
            pid = parent_of(pid)?;
        }
        None
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether `/run/netns` is a shared mount that is not a slave, in this `mountinfo`.
fn netns_dir_is_master(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let optional = fields
            .iter()
            .skip(6)
            .take_while(|f| **f != "-")
            .collect::<Vec<_>>();
        fields.get(4) == Some(&"/run/netns")
            && optional.iter().any(|f| f.starts_with("shared:"))
            && !optional.iter().any(|f| f.starts_with("master:"))
    })
}

fn which(tool: &'static str) -> Result<PathBuf, CmdError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .ok_or(CmdError::NotFound { tool })
}

/// Runs `program args…` to completion and returns its stdout; a non-zero exit is an error that
/// carries the command line and stderr.
pub async fn run<I, S>(program: &Path, args: I) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let command = display(program, &args);
    tracing::debug!(%command, "running");
    let output = tokio::process::Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| CmdError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(CmdError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The command line as a person would type it (arguments with spaces quoted).
pub fn display<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        line.push(' ');
        let arg = arg.as_ref().to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            line.push_str(&shell_quote(&arg));
        } else {
            line.push_str(&arg);
        }
    }
    line
}

/// Quotes `s` for a POSIX shell: `it's` → `'it'\''s'`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn displays_commands_readably() {
        let line = display(Path::new("/usr/sbin/ip"), &["netns", "add", "a b"]);
        assert_eq!(line, "/usr/sbin/ip netns add 'a b'");
    }

    #[test]
    fn tells_a_slave_netns_dir_from_the_machines() {
        let machine = "42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw";
        let slave = "101 67 254:0 /run/netns /run/netns rw,relatime shared:3 master:1 - ext4 /dev/vda rw\n\
                     102 101 0:4 net:[4] /run/netns/ferry-e2e rw shared:4 master:2 - nsfs nsfs rw";
        assert!(netns_dir_is_master(machine));
        assert!(!netns_dir_is_master(slave));
        assert!(!netns_dir_is_master(""));
    }

    #[tokio::test]
    async fn failure_names_the_command_and_its_stderr() {
        let err = run(Path::new("/bin/sh"), ["-c", "echo boom >&2; exit 3"])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/bin/sh -c 'echo boom >&2; exit 3'"),
            "{text}"
        );
        assert!(text.contains("boom"), "{text}");
    }
}
