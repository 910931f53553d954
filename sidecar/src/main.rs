//! `ferryd`: the sidecar on its own (what containers run). Takes `daprd`'s flag names.
#![forbid(unsafe_code)]

use clap::Parser;
use ferry_sidecar::{EX_USAGE, RunInfo, SidecarArgs, exit_on_clap_error, logging};

#[derive(Parser, Debug)]
#[command(
    name = "ferryd",
    version,
    about = "Ferry's sidecar: Dapr-compatible service invocation"
)]
struct Cli {
    #[command(flatten)]
    sidecar: SidecarArgs,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_on_clap_error("ferryd", e),
    };
    logging::init(cli.sidecar.log_level, cli.sidecar.log_as_json);
    let threads = cli.sidecar.worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    // One CPU (a pinned process, a pod limited to a core or less): a single-threaded runtime,
    // as linkerd2-proxy does, since a second worker could only add cross-thread wake-ups.
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("cannot start the async runtime");
    let code = rt.block_on(run(cli.sidecar));
    std::process::exit(code);
}

async fn run(args: SidecarArgs) -> i32 {
    let mut running = match ferry_sidecar::start(&args, RunInfo::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferryd: {e}");
            return EX_USAGE;
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = running.wait() => {}
    }
    running.shutdown().await;
    0
}
