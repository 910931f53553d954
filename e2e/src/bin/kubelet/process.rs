//! One container as a local process: entered into the pod's network namespace (`ip netns
//! exec`), given a mount namespace of its own (`unshare --mount`) in which its volumes are
//! bind-mounted at their mount paths, and a UTS namespace with the pod's hostname. The
//! wrapper `exec`s the real program, so the child's PID is the container's and its process
//! group is the container's own.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cmd::{Tools, shell_quote};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open the log file {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal process group {pgid}: {source}")]
    Signal { pgid: u32, source: Errno },
}

/// A volume bind-mounted into the container's view of the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The pod's network namespace; `None` for hostNetwork pods.
    pub netns: Option<String>,
    /// Set in a UTS namespace of the container's own (pods with their own network only).
    pub hostname: Option<String>,
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub working_dir: PathBuf,
    pub log_path: PathBuf,
}

/// The command line that starts the container (pure; `is_file` tells file mounts from
/// directory mounts).
pub fn wrapper(
    tools: &Tools,
    spec: &LaunchSpec,
    is_file: impl Fn(&Path) -> bool,
) -> (PathBuf, Vec<String>) {
    // The process dies with the kubelet (SIGKILL on the parent's death, kept across the execs
    // below), so a crashed kubelet leaves no container behind.
    let mut args: Vec<String> = vec!["--pdeathsig".into(), "KILL".into(), "--".into()];
    if let Some(netns) = &spec.netns {
        args.push(tools.ip.display().to_string());
        args.extend(["netns".into(), "exec".into(), netns.clone()]);
    }
    args.push(tools.unshare.display().to_string());
    args.push("--mount".into());
    if spec.hostname.is_some() {
        args.push("--uts".into());
    }
    args.extend(["--propagation".into(), "private".into()]);
    args.push(tools.bash.display().to_string());
    args.push("-c".into());
    args.push(setup_script(tools, spec, is_file));
    args.push(spec.program.clone());
    args.extend(spec.args.iter().cloned());
    (tools.setpriv.clone(), args)
}

fn setup_script(tools: &Tools, spec: &LaunchSpec, is_file: impl Fn(&Path) -> bool) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mkdir = q(&tools.mkdir);
    let mount = q(&tools.mount);
    let mut lines = vec!["set -e".to_owned()];
    if let Some(hostname) = &spec.hostname {
        lines.push(format!(
            "echo {} > /proc/sys/kernel/hostname",
            shell_quote(hostname)
        ));
    }
    for m in &spec.mounts {
        let target = q(&m.target);
        if is_file(&m.source) {
            let parent = m.target.parent().unwrap_or(Path::new("/"));
            lines.push(format!("{mkdir} -p {}", q(parent)));
            lines.push(format!("[ -e {target} ] || : > {target}"));
        } else {
            lines.push(format!("{mkdir} -p {target}"));
        }
        lines.push(format!("{mount} --bind {} {target}", q(&m.source)));
        if m.read_only {
            lines.push(format!("{mount} -o remount,bind,ro {target}"));
        }
    }
    let wd = q(&spec.working_dir);
    lines.push(format!("{mkdir} -p {wd}"));
    lines.push(format!("cd {wd}"));
    // `env -u` drops what bash adds to the environment (bash's own `exec` re-adds SHLVL),
    // unless the container asked for it.
    let unset: String = ["OLDPWD", "PWD", "SHLVL"]
        .into_iter()
        .filter(|v| !spec.env.contains_key(*v))
        .map(|v| format!(" -u {v}"))
        .collect();
    lines.push(format!(r#"exec {}{unset} -- "$0" "$@""#, q(&tools.env)));
    lines.join("\n")
}

/// A started container process.
#[derive(Debug)]
pub struct Started {
    pub pid: u32,
    pub child: tokio::process::Child,
}

/// Starts the container with stdout and stderr appended to its log file.
pub fn spawn(tools: &Tools, spec: &LaunchSpec) -> Result<Started, ProcessError> {
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ProcessError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // subPath sources that do not exist yet become directories, as with the kubelet.
    for m in &spec.mounts {
        if !m.source.exists() {
            std::fs::create_dir_all(&m.source).map_err(|source| ProcessError::Dir {
                path: m.source.clone(),
                source,
            })?;
        }
    }
    let log_err = |source| ProcessError::Log {
        path: spec.log_path.clone(),
        source,
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(log_err)?;
    let log2 = log.try_clone().map_err(log_err)?;
    let (program, args) = wrapper(tools, spec, Path::is_file);
    let child = tokio::process::Command::new(&program)
        .args(&args)
        .env_clear()
        .envs(&spec.env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            command: crate::cmd::display(&program, &args[..args.len().min(4)]),
            source,
        })?;
    let pid = child.id().unwrap_or_default();
    Ok(Started { pid, child })
}

/// Signals the container's whole process group; a group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) -> Result<(), ProcessError> {
    match killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(ProcessError::Signal { pgid, source }),
    }
}

/// The exit code as a container runtime reports it: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (-1, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Tools {
        Tools {
            ip: "/sbin/ip".into(),
            unshare: "/usr/bin/unshare".into(),
            nsenter: "/usr/bin/nsenter".into(),
            bash: "/bin/bash".into(),
            mount: "/bin/mount".into(),
            mkdir: "/bin/mkdir".into(),
            env: "/usr/bin/env".into(),
            setpriv: "/usr/bin/setpriv".into(),
            host_mount_ns: None,
        }
    }

    fn spec(netns: Option<&str>) -> LaunchSpec {
        LaunchSpec {
            netns: netns.map(str::to_owned),
            hostname: netns.map(|_| "web-1".to_owned()),
            program: "/repo/target/debug/ferry-testapp".into(),
            args: vec!["--port".into(), "8080".into()],
            env: BTreeMap::new(),
            mounts: vec![
                Mount {
                    source: "/run/pods/u/volumes/sa".into(),
                    target: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                    read_only: true,
                },
                Mount {
                    source: "/run/pods/u/volumes/cfg/app.conf".into(),
                    target: "/etc/app.conf".into(),
                    read_only: false,
                },
            ],
            working_dir: "/run/pods/u".into(),
            log_path: "/run/logs/app.log".into(),
        }
    }

    #[test]
    fn pod_network_containers_enter_the_namespace_then_mount_and_exec() {
        let (program, args) = wrapper(&tools(), &spec(Some("ferry-pod-abc")), |p| {
            p.ends_with("app.conf")
        });
        assert_eq!(program, Path::new("/usr/bin/setpriv"));
        assert_eq!(args[..3], ["--pdeathsig", "KILL", "--"]);
        let args = &args[3..];
        assert_eq!(
            args[..10],
            [
                "/sbin/ip",
                "netns",
                "exec",
                "ferry-pod-abc",
                "/usr/bin/unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "/bin/bash"
            ]
        );
        assert_eq!(args[10], "-c");
        assert_eq!(
            args[11],
            "set -e\n\
             echo 'web-1' > /proc/sys/kernel/hostname\n\
             '/bin/mkdir' -p '/var/run/secrets/kubernetes.io/serviceaccount'\n\
             '/bin/mount' --bind '/run/pods/u/volumes/sa' '/var/run/secrets/kubernetes.io/serviceaccount'\n\
             '/bin/mount' -o remount,bind,ro '/var/run/secrets/kubernetes.io/serviceaccount'\n\
             '/bin/mkdir' -p '/etc'\n\
             [ -e '/etc/app.conf' ] || : > '/etc/app.conf'\n\
             '/bin/mount' --bind '/run/pods/u/volumes/cfg/app.conf' '/etc/app.conf'\n\
             '/bin/mkdir' -p '/run/pods/u'\n\
             cd '/run/pods/u'\n\
             exec '/usr/bin/env' -u OLDPWD -u PWD -u SHLVL -- \"$0\" \"$@\""
        );
        assert_eq!(
            args[12..],
            ["/repo/target/debug/ferry-testapp", "--port", "8080"]
        );
    }

    #[test]
    fn host_network_containers_only_get_a_mount_namespace() {
        let (program, args) = wrapper(&tools(), &spec(None), |_| false);
        assert_eq!(program, Path::new("/usr/bin/setpriv"));
        assert_eq!(
            args[..7],
            [
                "--pdeathsig",
                "KILL",
                "--",
                "/usr/bin/unshare",
                "--mount",
                "--propagation",
                "private"
            ]
        );
    }

    #[tokio::test]
    async fn exit_codes_follow_runtime_conventions() {
        let status = tokio::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .status()
            .await
            .unwrap();
        assert_eq!(exit_code(status), (3, None));
        let status = tokio::process::Command::new("/bin/sh")
            .args(["-c", "kill -TERM $$"])
            .status()
            .await
            .unwrap();
        assert_eq!(exit_code(status), (143, Some(15)));
    }
}
