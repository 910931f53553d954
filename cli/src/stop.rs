//! `ferry stop`: stops apps started with `ferry run`, as `dapr stop` does: by app ID, or every
//! app of a run file (by stopping the `ferry run -f` that started them).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Args;
use ferry_sidecar::{config::ferry_home, registry};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{multi::STOP_WAIT, runfile};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["app_id", "run_file"])))]
pub struct StopArgs {
    /// The app to stop (every one of that ID on this machine); may be repeated or
    /// comma-separated.
    #[arg(long, short = 'a', value_delimiter = ',')]
    pub app_id: Vec<String>,

    /// Stop every app of this run file (a dapr.yaml, or a directory that holds one).
    #[arg(long = "run-file", short = 'f', value_name = "FILE")]
    pub run_file: Option<PathBuf>,

    /// Where running sidecars register (`<dir>/registry`); default `~/.ferry`.
    #[arg(long, env = "FERRY_HOME")]
    pub ferry_home: Option<PathBuf>,
}

pub fn main(args: StopArgs) -> i32 {
    let dir = ferry_home(args.ferry_home.clone()).join("registry");
    let entries = match registry::scan(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ferry: cannot read {}: {e}", dir.display());
            return 1;
        }
    };
    let mut code = 0;
    if let Some(given) = &args.run_file {
        let path = match runfile::locate(given) {
            Ok(Some(p)) => p,
            Ok(None) => {
                eprintln!("ferry: ferry stop -f needs the run file's path, not standard input");
                return ferry_sidecar::EX_USAGE;
            }
            Err(e) => {
                eprintln!("ferry: {e}");
                return 1;
            }
        };
        let shown = path.display().to_string();
        let apps: Vec<&registry::Entry> = entries
            .iter()
            .filter(|e| e.run_file.as_deref() == Some(shown.as_str()))
            .collect();
        if apps.is_empty() {
            eprintln!("ferry: no app of {shown} is running (ferry list shows what runs)");
            return 1;
        }
        // The `ferry run -f` that started them stops them all; apps whose runner is gone are
        // stopped one by one.
        let mut runners: Vec<u32> = apps.iter().filter_map(|e| e.cli_pid).collect();
        runners.sort_unstable();
        runners.dedup();
        let mut pids: Vec<u32> = runners.into_iter().filter(|p| alive(*p)).collect();
        pids.extend(
            apps.iter()
                .filter(|e| e.cli_pid.is_none_or(|p| !alive(p)))
                .map(|e| e.pid),
        );
        if !stop(&pids) {
            code = 1;
        }
        for e in &apps {
            report(e, alive(e.pid), &mut code);
        }
        return code;
    }
    for id in &args.app_id {
        let apps: Vec<&registry::Entry> = entries.iter().filter(|e| &e.app_id == id).collect();
        if apps.is_empty() {
            eprintln!("ferry: no app {id:?} is running (ferry list shows what runs)");
            code = 1;
            continue;
        }
        let pids: Vec<u32> = apps.iter().map(|e| e.pid).collect();
        stop(&pids);
        for e in apps {
            report(e, alive(e.pid), &mut code);
        }
    }
    code
}

fn report(e: &registry::Entry, still_running: bool, code: &mut i32) {
    if still_running {
        eprintln!(
            "ferry: app {:?} (pid {}) did not stop within {}s",
            e.app_id,
            e.pid,
            STOP_WAIT.as_secs() + 5
        );
        *code = 1;
    } else {
        println!("ferry: app {:?} stopped", e.app_id);
    }
}

/// The process exists and has not exited: a zombie (exited, not yet reaped by its parent)
/// counts as gone.
fn alive(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// SIGTERM to each process, then waits until they are gone; `false` if some are not.
fn stop(pids: &[u32]) -> bool {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_WAIT + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}
