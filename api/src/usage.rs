//! Command lines: one rule for bad flags in every binary.

/// Exit code for bad flags or configuration (BSD `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// Help and version print as usual; a bad flag gets one line naming it (`<program>: invalid
/// value '70000' for '--app-port <APP_PORT>': 70000 is not in 1..=65535`) and exit code 64.
#[cfg(feature = "clap")]
pub fn exit_on_clap_error(program: &str, e: clap::Error) -> ! {
    if let Some(line) = clap_error_line(&e) {
        eprintln!("{program}: {line}");
        std::process::exit(EX_USAGE);
    }
    e.exit()
}

/// The one line a bad command line is reported with; `None` for help and version, which print
/// as clap prints them.
#[cfg(feature = "clap")]
pub fn clap_error_line(e: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return None;
    }
    let text = e.to_string();
    let line = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    // clap's "tip: a similar argument exists" names the flag that was meant.
    let tip = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("tip: a similar"));
    Some(match tip {
        Some(tip) => format!("{line} ({tip})"),
        None => line.to_owned(),
    })
}

#[cfg(all(test, feature = "clap"))]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "t", version)]
    struct Cli {
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    }

    #[test]
    fn a_bad_flag_is_one_line_and_help_is_not_an_error() {
        let e = Cli::try_parse_from(["t", "--port", "0"]).unwrap_err();
        let line = clap_error_line(&e).unwrap();
        assert!(
            line.starts_with("invalid value '0' for '--port <PORT>'"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        let e = Cli::try_parse_from(["t", "--prot", "1"]).unwrap_err();
        assert_eq!(
            clap_error_line(&e).unwrap(),
            "unexpected argument '--prot' found (tip: a similar argument exists: '--port')"
        );
        let help = Cli::try_parse_from(["t", "--help"]).unwrap_err();
        assert_eq!(clap_error_line(&help), None);
        let version = Cli::try_parse_from(["t", "--version"]).unwrap_err();
        assert_eq!(clap_error_line(&version), None);
    }
}
