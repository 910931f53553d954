//! `ferry run`: the sidecar in this process, the app as a child.

use std::process::ExitStatus;

use clap::Args;
use ferry_api::headers::env;
use ferry_sidecar::{EX_USAGE, RunInfo, SidecarArgs, StartError, logging};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sidecar: SidecarArgs,

    /// The app to start, after `--`; without it only the sidecar runs.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub fn main(args: RunArgs) -> i32 {
    logging::init(args.sidecar.log_level, args.sidecar.log_as_json);
    crate::runtime(true).block_on(run(args))
}

async fn run(args: RunArgs) -> i32 {
    let mut running = match ferry_sidecar::start(
        &args.sidecar,
        RunInfo {
            command: args.command.clone(),
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: {e}");
            return match e {
                StartError::Resources(_) | StartError::Config(_) => EX_USAGE,
                _ => 1,
            };
        }
    };
    let mut signals = Signals::new();

    let Some((program, rest)) = args.command.split_first() else {
        // Sidecar only, until stopped.
        tokio::select! {
            _ = signals.next() => {}
            _ = running.wait() => {}
        }
        running.shutdown().await;
        return 0;
    };

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .env(env::DAPR_HTTP_PORT, running.http_port().to_string())
        .env(env::DAPR_GRPC_PORT, running.entry.grpc_port.to_string())
        .env(env::APP_ID, &running.entry.app_id)
        // Its own process group: a Ctrl-C in the terminal reaches only us, and we pass it on
        // exactly once.
        .process_group(0);
    if let Some(port) = running.entry.app_port {
        cmd.env(env::APP_PORT, port.to_string());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: cannot start {program:?}: {e}");
            running.shutdown().await;
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let pid = child.id().expect("a child that was just spawned has a pid");
    running.set_app_pid(pid);
    tracing::info!(pid, command = ?args.command, "app started");

    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.next() => {
                tracing::info!(signal = ?sig, "passing the signal on to the app");
                if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig) {
                    tracing::warn!(error = %e, "cannot signal the app");
                }
            }
        }
    };
    running.shutdown().await;
    match status {
        Ok(s) => {
            tracing::info!(status = %s, "app exited");
            exit_code(s)
        }
        Err(e) => {
            eprintln!("ferry: lost track of the app: {e}");
            1
        }
    }
}

/// The app's exit code, or 128 + the signal that ended it (as a shell reports it).
fn exit_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    s.code()
        .or_else(|| s.signal().map(|sig| 128 + sig))
        .unwrap_or(1)
}

/// The signals `ferry run` passes on to its app.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Self {
        let s = |k| signal(k).expect("cannot install a signal handler");
        Self {
            int: s(SignalKind::interrupt()),
            term: s(SignalKind::terminate()),
            hup: s(SignalKind::hangup()),
            quit: s(SignalKind::quit()),
        }
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }
}
