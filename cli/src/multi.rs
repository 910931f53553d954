//! `ferry run -f dapr.yaml`: every app of a run file, each as its own `ferry run` (its sidecar
//! and its app), as Dapr's Multi-App Run starts a daprd and an app per entry.
//!
//! Each `ferry run` is its own process group and marks its lines with its app ID (the app's
//! with `== APP - <id> == `, its sidecar's with `== DAPR - <id> == `), or writes them to
//! `<appDirPath>/.dapr/logs/` as the file says. Ctrl-C or SIGTERM stops them all: each passes
//! the signal on to its app and shuts its sidecar down; whatever has not exited after
//! [`STOP_WAIT`] is killed, app included.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use ferry_sidecar::{EX_USAGE, config::ferry_home, registry};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use tokio::process::{Child, Command};

use crate::{
    run::{Destination, KILL_AFTER, Signals},
    runfile::{self, App, RunFile},
};

/// How long the apps get to stop, after which what is left is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(KILL_AFTER.as_secs() + 5);
/// How long a sidecar may take to start (it registers once it serves).
const START_WAIT: Duration = Duration::from_secs(30);

/// Runs the apps of the run file at `given`; `mesh` are flags every sidecar gets (mTLS).
pub fn main(given: &Path, mesh: &[String]) -> i32 {
    let file = match runfile::load(given) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry: {e}");
            return EX_USAGE;
        }
    };
    for w in &file.warnings {
        eprintln!("ferry: warning: {}: {w}", file.shown);
    }
    crate::runtime(true).block_on(supervise(file, mesh))
}

/// One started app.
struct Started {
    app_id: String,
    child: Child,
    pid: u32,
    exited: Option<ExitStatus>,
}

async fn supervise(file: RunFile, mesh: &[String]) -> i32 {
    let registry_dir =
        ferry_home(std::env::var_os("FERRY_HOME").map(PathBuf::from)).join("registry");
    let mut signals = Signals::new();
    let mut started: Vec<Started> = Vec::new();
    let mut failed = false;
    for app in &file.apps {
        match start(&file, app, mesh).await {
            Ok(s) => started.push(s),
            Err(e) => {
                eprintln!("ferry: {}: app {:?}: {e}", file.shown, app.app_id);
                failed = true;
                break;
            }
        }
    }
    // Wait for each sidecar to serve, so that a bad start stops the others at once, as Dapr does.
    if !failed {
        let deadline = Instant::now() + START_WAIT;
        'apps: for (s, app) in started.iter_mut().zip(&file.apps) {
            loop {
                if let Ok(Some(status)) = s.child.try_wait() {
                    s.exited = Some(status);
                    eprintln!(
                        "ferry: app {:?} did not start ({}); stopping the others",
                        s.app_id,
                        describe(status)
                    );
                    if app.daprd_log != Destination::Console {
                        eprintln!(
                            "ferry: its sidecar's log: {}",
                            log_path(app, "daprd").display()
                        );
                    }
                    failed = true;
                    break 'apps;
                }
                if let Some(e) = registered(&registry_dir, s.pid) {
                    println!(
                        "ferry: started app {:?}: HTTP port {}, gRPC port {}{}",
                        s.app_id,
                        e.http_port,
                        e.grpc_port,
                        match e.app_port {
                            Some(p) => format!(", app port {p}"),
                            None => String::new(),
                        }
                    );
                    if app.app_log.file() || app.daprd_log.file() {
                        println!(
                            "ferry: app {:?} writes its log files to {}",
                            s.app_id,
                            log_dir(app).display()
                        );
                    }
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "ferry: app {:?}: its sidecar did not start within {}s; stopping the others",
                        s.app_id,
                        START_WAIT.as_secs()
                    );
                    failed = true;
                    break 'apps;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    let mut stopped_by_signal = false;
    if !failed {
        loop {
            if started.iter().all(|s| s.exited.is_some()) {
                break;
            }
            tokio::select! {
                sig = signals.next() => {
                    println!("ferry: {sig}: stopping every app");
                    stopped_by_signal = true;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    for s in started.iter_mut().filter(|s| s.exited.is_none()) {
                        if let Ok(Some(status)) = s.child.try_wait() {
                            s.exited = Some(status);
                            println!("ferry: app {:?} exited ({})", s.app_id, describe(status));
                        }
                    }
                }
            }
        }
    }
    stop_all(&mut started, &registry_dir).await;
    if failed {
        1
    } else if stopped_by_signal
        || started
            .iter()
            .all(|s| s.exited.is_some_and(|st| st.success()))
    {
        0
    } else {
        1
    }
}

/// Sends SIGTERM to every `ferry run` still running, waits, then kills what is left (and the
/// app groups the registry names).
async fn stop_all(started: &mut [Started], registry_dir: &Path) {
    let app_groups: Vec<Option<u32>> = started
        .iter()
        .map(|s| registered(registry_dir, s.pid).and_then(|e| e.app_pid))
        .collect();
    for s in started.iter().filter(|s| s.exited.is_none()) {
        let _ = kill(Pid::from_raw(s.pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        for s in started.iter_mut().filter(|s| s.exited.is_none()) {
            if let Ok(Some(status)) = s.child.try_wait() {
                s.exited = Some(status);
            }
        }
        if started.iter().all(|s| s.exited.is_some()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (s, app) in started.iter_mut().zip(app_groups) {
        if s.exited.is_none() {
            eprintln!(
                "ferry: app {:?} did not stop within {}s: killing it",
                s.app_id,
                STOP_WAIT.as_secs()
            );
            let _ = s.child.kill().await;
            s.exited = s.child.try_wait().ok().flatten();
        }
        // A `ferry run` that was killed could not take its app along.
        if let Some(app) = app {
            let _ = killpg(Pid::from_raw(app as i32), Signal::SIGKILL);
        }
        println!("ferry: app {:?} stopped", s.app_id);
    }
}

/// The registry entry of the sidecar in process `pid`, once it serves.
fn registered(dir: &Path, pid: u32) -> Option<registry::Entry> {
    registry::scan(dir).ok()?.into_iter().find(|e| e.pid == pid)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exit code 0".into(),
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// `<appDirPath>/.dapr/logs`, as Dapr's.
fn log_dir(app: &App) -> PathBuf {
    app.dir.join(".dapr").join("logs")
}

/// Dapr's names: `<app-id>_<app|daprd>_<YYYYMMDDhhmmss>.log` (UTC here).
fn log_path(app: &App, kind: &str) -> PathBuf {
    log_dir(app).join(format!("{}_{kind}_{}.log", app.app_id, stamp()))
}

fn stamp() -> String {
    // Computed once per run, so that an app's two files share it.
    static STAMP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STAMP
        .get_or_init(|| {
            let t = time::OffsetDateTime::now_utc();
            format!(
                "{:04}{:02}{:02}{:02}{:02}{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .clone()
}

/// A free port, for the gRPC port given to the app (nothing serves it yet; Dapr's CLI picks
/// free ports the same way).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start(file: &RunFile, app: &App, mesh: &[String]) -> Result<Started, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ferry binary: {e}"))?;
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(app.flags.iter().cloned());
    args.extend(mesh.iter().cloned());
    args.push("--dapr-http-port".into());
    args.push(app.http_port.unwrap_or(0).to_string());
    let grpc = match app.grpc_port {
        Some(p) => p,
        None => free_port().map_err(|e| format!("cannot find a free port: {e}"))?,
    };
    args.push("--dapr-grpc-port".into());
    args.push(grpc.to_string());
    if let Some(path) = &file.path {
        args.push("--from-run-file".into());
        args.push(path.display().to_string());
    }
    if app.app_log.file() || app.daprd_log.file() {
        std::fs::create_dir_all(log_dir(app))
            .map_err(|e| format!("cannot create {}: {e}", log_dir(app).display()))?;
    }
    args.push("--daprd-log-destination".into());
    args.push(app.daprd_log.name().into());
    if app.daprd_log.file() {
        args.push("--daprd-log-file".into());
        args.push(log_path(app, "daprd").display().to_string());
    }
    if !app.command.is_empty() {
        args.push("--app-log-destination".into());
        args.push(app.app_log.name().into());
        if app.app_log.file() {
            args.push("--app-log-file".into());
            args.push(log_path(app, "app").display().to_string());
        }
        args.push("--".into());
        args.extend(app.command.iter().cloned());
    }
    let child = Command::new(exe)
        .args(&args)
        .current_dir(&app.dir)
        .envs(&app.env)
        .stdin(std::process::Stdio::null())
        // Its own group: Ctrl-C reaches only this process, which stops each app once.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("cannot start ferry run: {e}"))?;
    let pid = child.id().expect("a child that was just spawned has a pid");
    Ok(Started {
        app_id: app.app_id.clone(),
        child,
        pid,
        exited: None,
    })
}
