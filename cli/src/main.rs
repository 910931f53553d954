//! `ferry`: run apps with a sidecar on one machine, invoke them, list them.
#![forbid(unsafe_code)]

mod crds;
mod inject;
mod invoke;
mod list;
mod run;

use clap::{Parser, Subcommand};
use ferry_sidecar::exit_on_clap_error;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Dapr-compatible service invocation, on one machine or on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a sidecar and (optionally) an app next to it: `ferry run --app-id cart --app-port 5000 -- python3 app.py`.
    Run(run::RunArgs),
    /// Invoke a method of a running app through a sidecar.
    Invoke(invoke::InvokeArgs),
    /// List the apps running on this machine.
    List(list::ListArgs),
    /// Add the sidecar to the pods and pod templates of Kubernetes manifests, offline.
    Inject(inject::InjectArgs),
    /// Write the CustomResourceDefinitions as YAML files (`make crds`).
    Crds(crds::CrdsArgs),
    /// Print the version.
    Version,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_on_clap_error("ferry", e),
    };
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Invoke(args) => invoke::main(args),
        Command::List(args) => list::main(args),
        Command::Crds(args) => crds::main(args),
        Command::Inject(args) => inject::main(args),
        Command::Version => {
            println!("ferry {}", env!("CARGO_PKG_VERSION"));
            0
        }
    };
    std::process::exit(code);
}

/// A current-thread runtime is plenty for the CLI's own work; `run` uses a multi-threaded one.
pub(crate) fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .expect("cannot start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_sound() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "ferry",
            "run",
            "--app-id",
            "cart",
            "--app-port",
            "5000",
            "--",
            "python3",
            "app.py",
            "--flag",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.command, ["python3", "app.py", "--flag"]);
        assert_eq!(r.sidecar.app_port, Some(5000));
    }
}
