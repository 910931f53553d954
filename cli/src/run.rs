//! `ferry run`: the sidecar in this process, the app as a child. With `-f`, every app of a run
//! file, each as its own `ferry run` (see `multi.rs`).

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::{ArgMatches, Args, ValueEnum, parser::ValueSource};
use ferry_api::headers::env;
use ferry_sidecar::{
    EX_USAGE, RunInfo, SidecarArgs, StartError,
    logging::{self, LogOutput},
};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader},
    signal::unix::{SignalKind, signal},
};

/// How long the app has to exit after a stop signal before its process group is killed.
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// Stands for "no --app-id given" (clap needs a value; it is never used as an ID).
pub const NO_APP_ID: &str = "ferry-run-without-app-id";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run every app of a Dapr run file (Multi-App Run): a dapr.yaml, or a directory that holds
    /// one. Each app's flags are in the file.
    #[arg(short = 'f', long = "run-file", value_name = "FILE")]
    pub run_file: Option<PathBuf>,

    #[command(flatten)]
    pub sidecar: SidecarArgs,

    #[command(flatten)]
    pub unsupported: Unsupported,

    #[command(flatten)]
    pub output: ChildOutput,

    /// The app to start and its arguments: after `--`, or from the first argument that is not a
    /// flag of ferry's (everything after it goes to the app unchanged). Without it only the
    /// sidecar runs.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// `dapr run` flags Ferry does not have: refused by name (or, where nothing depends on them,
/// accepted with a warning), never "unexpected argument".
#[derive(Debug, Args)]
pub struct Unsupported {
    #[arg(long, short = 'u', hide = true, value_name = "DIR")]
    unix_domain_socket: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    enable_profiling: Option<String>,
    #[arg(long, hide = true)]
    profile_port: Option<String>,
    #[arg(long, short = 'k', hide = true)]
    kubernetes: bool,
    #[arg(long, hide = true)]
    runtime_path: Option<String>,
    #[arg(long, hide = true)]
    placement_host_address: Option<String>,
    #[arg(long, hide = true)]
    scheduler_host_address: Option<String>,
}

impl Unsupported {
    /// The warnings for flags that are ignored; an error for the first one that is refused.
    pub fn check(&self) -> Result<Vec<String>, String> {
        if self.unix_domain_socket.is_some() {
            return Err(
                "--unix-domain-socket is not supported yet: Ferry's APIs listen on TCP ports (use --dapr-http-port; apps find it in DAPR_HTTP_PORT)".into(),
            );
        }
        if self
            .enable_profiling
            .as_deref()
            .is_some_and(|v| v != "false")
            || self.profile_port.is_some()
        {
            return Err(
                "--enable-profiling and --profile-port are not supported yet: Ferry has no pprof endpoint (profile the process with perf or valgrind instead)".into(),
            );
        }
        if self.kubernetes {
            return Err(
                "--kubernetes (-k) is not supported yet: run the apps on Kubernetes as annotated Deployments (ferry inject -f, or the injector)".into(),
            );
        }
        let mut warnings = Vec::new();
        if self.runtime_path.is_some() {
            warnings.push(
                "--runtime-path is ignored: ferry runs its sidecar in its own process, there is no runtime to find".into(),
            );
        }
        for (flag, given) in [
            ("--placement-host-address", &self.placement_host_address),
            ("--scheduler-host-address", &self.scheduler_host_address),
        ] {
            if given.is_some() {
                warnings.push(format!(
                    "{flag} is ignored: Ferry does service invocation only, and has no actors, workflows or jobs that use Dapr's placement and scheduler services"
                ));
            }
        }
        Ok(warnings)
    }
}

/// Where output goes when `ferry run -f` started this `ferry run` (hidden: the run file's
/// `appLogDestination` and `daprdLogDestination`, Dapr's names and defaults).
#[derive(Debug, Args)]
pub struct ChildOutput {
    /// The run file this app is from (recorded in the registry for `ferry stop -f`).
    #[arg(long, hide = true)]
    pub from_run_file: Option<String>,
    #[arg(long, hide = true, value_enum)]
    pub app_log_destination: Option<Destination>,
    #[arg(long, hide = true)]
    pub app_log_file: Option<PathBuf>,
    #[arg(long, hide = true, value_enum)]
    pub daprd_log_destination: Option<Destination>,
    #[arg(long, hide = true)]
    pub daprd_log_file: Option<PathBuf>,
}

/// Dapr's log destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Destination {
    Console,
    File,
    #[value(name = "fileAndConsole")]
    FileAndConsole,
}

impl Destination {
    pub fn name(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::File => "file",
            Self::FileAndConsole => "fileAndConsole",
        }
    }

    pub fn console(self) -> bool {
        self != Self::File
    }

    pub fn file(self) -> bool {
        self != Self::Console
    }
}

/// Gives the `run` subcommand `dapr run`'s short flags, and lets `--app-id` be left out with
/// `-f` (checked in [`main`]).
/// Flags of the whole mesh, which `ferry run -f` takes and gives every app's sidecar.
const MESH_WIDE: &[&str] = &[
    "enable_mtls",
    "sentry_address",
    "trust_anchors_file",
    "control_plane_namespace",
    "control_plane_trust_domain",
    "workload_cert_ttl",
];

pub fn adjust(run: clap::Command) -> clap::Command {
    let short = |c: clap::Command, id: &str, s: char| c.mut_arg(id, |a| a.short(s));
    let run = run.mut_arg("app_id", |a| {
        a.required(false)
            .default_value(NO_APP_ID)
            .hide_default_value(true)
            .short('a')
    });
    let run = short(run, "app_port", 'p');
    let run = short(run, "dapr_http_port", 'H');
    // As `dapr run`: a free port unless one is given, so that several apps run side by side.
    let run = run.mut_arg("dapr_grpc_port", |a| a.default_value("0"));
    let run = short(run, "dapr_grpc_port", 'G');
    let run = short(run, "dapr_internal_grpc_port", 'I');
    let run = short(run, "config", 'c');
    let run = short(run, "app_protocol", 'P');
    let run = short(run, "metrics_port", 'M');
    run.mut_arg("resources_path", |a| a.short_alias('d'))
}

fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

pub fn main(mut args: RunArgs, m: &ArgMatches) -> i32 {
    let warnings = match args.unsupported.check() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("ferry: {e}");
            return EX_USAGE;
        }
    };
    if let Some(file) = &args.run_file {
        let run = crate::command();
        let run = run
            .find_subcommand("run")
            .expect("the run subcommand exists");
        let given_here = |a: &&clap::Arg| {
            a.get_id() != "run_file"
                && a.get_id() != "command"
                && m.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
        };
        let flags: Vec<String> = run
            .get_arguments()
            .filter(given_here)
            .filter(|a| !MESH_WIDE.contains(&a.get_id().as_str()))
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        // mTLS is the whole mesh's: given with -f, every app's sidecar gets it.
        let mesh: Vec<String> = run
            .get_arguments()
            .filter(given_here)
            .filter(|a| MESH_WIDE.contains(&a.get_id().as_str()))
            .filter_map(|a| {
                let long = a.get_long()?;
                let value = m
                    .get_raw(a.get_id().as_str())?
                    .next()?
                    .to_string_lossy()
                    .into_owned();
                Some(format!("--{long}={value}"))
            })
            .collect();
        if !args.command.is_empty() {
            eprintln!(
                "ferry: ferry run -f takes no command: each app's command is in the run file (command: [...] under the app)"
            );
            return EX_USAGE;
        }
        if !flags.is_empty() {
            eprintln!(
                "ferry: ferry run -f takes each app's settings from the run file; put {} in its common section or under the app",
                flags.join(", ")
            );
            return EX_USAGE;
        }
        for w in warnings {
            eprintln!("ferry: warning: {w}");
        }
        return crate::multi::main(file, &mesh);
    }
    if !given(m, "app_id") {
        eprintln!(
            "ferry: ferry run needs --app-id <ID> (the name other apps call this one by), or -f <run file> to run the apps of a run file"
        );
        return EX_USAGE;
    }
    // As with `dapr run`, naming a metrics port asks for metrics (daprd serves them by default).
    if given(m, "metrics_port") {
        args.sidecar.enable_metrics = true;
    }
    let out = &args.output;
    let prefix = out.daprd_log_destination.is_some() || out.app_log_destination.is_some();
    let id = args.sidecar.app_id.to_string();
    let say = Say {
        prefix: if prefix {
            format!("== DAPR - {id} == ")
        } else {
            String::new()
        },
    };
    let log = match log_output(out, &say.prefix) {
        Ok(l) => l,
        Err(e) => {
            say.line(&e);
            return 1;
        }
    };
    logging::init_to(args.sidecar.log_level, args.sidecar.log_as_json, log);
    for w in warnings {
        tracing::warn!("{w}");
    }
    crate::runtime(true).block_on(run(args, say))
}

/// The sidecar's log, as the run file's `daprdLogDestination` says (stderr without one).
fn log_output(out: &ChildOutput, prefix: &str) -> Result<LogOutput, String> {
    let Some(dest) = out.daprd_log_destination else {
        return Ok(LogOutput::default());
    };
    let file = match (&out.daprd_log_file, dest.file()) {
        (Some(path), true) => Some(open_log(path)?),
        (None, true) => return Err("--daprd-log-destination file needs --daprd-log-file".into()),
        (_, false) => None,
    };
    Ok(LogOutput {
        prefix: Some(prefix.to_owned()),
        file,
        quiet: !dest.console(),
    })
}

fn open_log(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))
}

/// Messages of `ferry run` itself, on stderr: marked with the app ID when a run file started it.
struct Say {
    prefix: String,
}

impl Say {
    fn line(&self, msg: &str) {
        eprintln!("{}ferry: {msg}", self.prefix);
    }
}

async fn run(args: RunArgs, say: Say) -> i32 {
    let info = RunInfo {
        command: args.command.clone(),
        run_file: args.output.from_run_file.clone(),
        cli_pid: args
            .output
            .from_run_file
            .is_some()
            .then(|| nix::unistd::getppid().as_raw() as u32),
    };
    let mut running = match ferry_sidecar::start(&args.sidecar, info).await {
        Ok(r) => r,
        Err(e) => {
            say.line(&e.to_string());
            return match e {
                StartError::Resources(_) | StartError::Config(_) | StartError::Configuration(_) => {
                    EX_USAGE
                }
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
        // exactly once, to the app and whatever it started.
        .process_group(0);
    if let Some(port) = running.entry.app_port {
        cmd.env(env::APP_PORT, port.to_string());
    }
    let app_output = match AppOutput::new(&args.output, &running.entry.app_id) {
        Ok(o) => o,
        Err(e) => {
            say.line(&e);
            running.shutdown().await;
            return 1;
        }
    };
    if app_output.is_some() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            say.line(&format!("cannot start {program:?}: {e}"));
            running.shutdown().await;
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let pid = child.id().expect("a child that was just spawned has a pid");
    let group = Pid::from_raw(pid as i32);
    let copies = app_output.map(|o| o.copy(&mut child));
    running.set_app_pid(pid);
    tracing::info!(pid, command = ?args.command, "app started");

    let mut deadline: Option<tokio::time::Instant> = None;
    let status = loop {
        let kill_at = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.next() => {
                tracing::info!(signal = ?sig, "passing the signal on to the app");
                if let Err(e) = nix::sys::signal::killpg(group, sig) {
                    tracing::warn!(error = %e, "cannot signal the app");
                }
                if sig != Signal::SIGHUP && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + KILL_AFTER);
                }
            }
            _ = kill_at => {
                tracing::warn!(
                    seconds = KILL_AFTER.as_secs(),
                    "the app did not exit after the stop signal: killing it"
                );
                let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
                deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    };
    // Whatever the app started in its group and left behind goes with it.
    let _ = nix::sys::signal::killpg(group, Signal::SIGTERM);
    if let Some(copies) = copies {
        // The copies end when the last writer of the app's pipes is gone.
        let _ = tokio::time::timeout(Duration::from_secs(2), copies).await;
    }
    running.shutdown().await;
    match status {
        Ok(s) => {
            tracing::info!(status = %s, "app exited");
            exit_code(s)
        }
        Err(e) => {
            say.line(&format!("lost track of the app: {e}"));
            1
        }
    }
}

/// The app's output when a run file started it: each line behind `== APP - <id> == ` on the
/// console, as Dapr prints it, and/or in the app's log file.
struct AppOutput {
    prefix: Arc<[u8]>,
    console: bool,
    file: Option<Arc<Mutex<File>>>,
}

impl AppOutput {
    fn new(out: &ChildOutput, app_id: &str) -> Result<Option<Self>, String> {
        let Some(dest) = out.app_log_destination else {
            return Ok(None);
        };
        let file = match (&out.app_log_file, dest.file()) {
            (Some(path), true) => Some(Arc::new(Mutex::new(open_log(path)?))),
            (None, true) => return Err("--app-log-destination file needs --app-log-file".into()),
            (_, false) => None,
        };
        Ok(Some(Self {
            prefix: format!("== APP - {app_id} == ").into_bytes().into(),
            console: dest.console(),
            file,
        }))
    }

    /// Copies the child's stdout and stderr until both end.
    fn copy(self, child: &mut tokio::process::Child) -> impl Future<Output = ()> + use<> {
        let out = child.stdout.take().map(|s| {
            tokio::spawn(lines(
                s,
                self.prefix.clone(),
                self.console,
                self.file.clone(),
                false,
            ))
        });
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(lines(s, self.prefix, self.console, self.file, true)));
        async move {
            for task in [out, err].into_iter().flatten() {
                let _ = task.await;
            }
        }
    }
}

/// The longest line kept whole; longer ones are cut into pieces of this size.
const MAX_LINE: usize = 64 * 1024;

async fn lines(
    from: impl AsyncRead + Unpin,
    prefix: Arc<[u8]>,
    console: bool,
    file: Option<Arc<Mutex<File>>>,
    stderr: bool,
) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if line[n - 1] != b'\n' {
            line.push(b'\n');
        }
        if console {
            // One write per line, prefix included, so that the apps' lines do not interleave.
            let mut whole = Vec::with_capacity(prefix.len() + line.len());
            whole.extend_from_slice(&prefix);
            whole.extend_from_slice(&line);
            let _ = if stderr {
                std::io::stderr().lock().write_all(&whole)
            } else {
                std::io::stdout().lock().write_all(&whole)
            };
        }
        if let Some(f) = &file {
            let _ = f.lock().unwrap_or_else(|p| p.into_inner()).write_all(&line);
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
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Self {
        let s = |k| signal(k).expect("cannot install a signal handler");
        Self {
            int: s(SignalKind::interrupt()),
            term: s(SignalKind::terminate()),
            hup: s(SignalKind::hangup()),
            quit: s(SignalKind::quit()),
        }
    }

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }
}
