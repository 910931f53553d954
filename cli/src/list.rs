//! `ferry list`: the apps running on this machine, from the registry.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use ferry_sidecar::{config::ferry_home, registry};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Where running sidecars register (`<dir>/registry`); default `~/.ferry`.
    #[arg(long, env = "FERRY_HOME")]
    pub ferry_home: Option<PathBuf>,

    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

pub fn main(args: ListArgs) -> i32 {
    let dir = ferry_home(args.ferry_home).join("registry");
    let entries = match registry::scan(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ferry: cannot read {}: {e}", dir.display());
            return 1;
        }
    };
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("entries serialize")
        ),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(&entries).expect("entries serialize")
        ),
        Output::Table => print!("{}", table(&entries)),
    }
    0
}

fn table(entries: &[registry::Entry]) -> String {
    if entries.is_empty() {
        return "No apps are running (start one with: ferry run --app-id <id> --app-port <port> -- <command>)\n".into();
    }
    // Apps from run files (`ferry run -f`) say which.
    let run_files = entries.iter().any(|e| e.run_file.is_some());
    let mut header = vec![
        "APP ID",
        "NAMESPACE",
        "HTTP PORT",
        "INTERNAL",
        "APP PORT",
        "PID",
        "AGE",
    ];
    if run_files {
        header.push("RUN FILE");
    }
    header.push("COMMAND");
    let mut rows: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for e in entries {
        let mut row = vec![
            e.app_id.clone(),
            e.namespace.clone(),
            e.http_port.to_string(),
            e.internal_address.to_string(),
            e.app_port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            match e.app_pid {
                Some(app) => format!("{} (app {app})", e.pid),
                None => e.pid.to_string(),
            },
            age(e.age()),
        ];
        if run_files {
            row.push(e.run_file.clone().unwrap_or_else(|| "-".into()));
        }
        row.push(if e.command.is_empty() {
            "-".into()
        } else {
            e.command.join(" ")
        });
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == columns - 1 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(Duration::from_secs(5)), "5s");
        assert_eq!(age(Duration::from_secs(125)), "2m");
        assert_eq!(age(Duration::from_secs(3_700)), "1h1m");
        assert_eq!(age(Duration::from_secs(200_000)), "2d");
    }

    #[test]
    fn table_lists_entries() {
        let e = registry::Entry {
            app_id: "cart".into(),
            namespace: "default".into(),
            internal_address: "127.0.0.1:40001".parse().unwrap(),
            http_port: 3500,
            grpc_port: 50001,
            app_port: Some(5000),
            app_protocol: "http".into(),
            pid: 10,
            app_pid: Some(11),
            command: vec!["python3".into(), "app.py".into()],
            run_file: None,
            cli_pid: None,
            started_at: registry::now_unix(),
        };
        let t = table(&[e]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("APP ID"));
        assert!(lines[1].starts_with("cart"));
        assert!(lines[1].contains("127.0.0.1:40001") && lines[1].ends_with("python3 app.py"));
        assert!(table(&[]).starts_with("No apps are running"));
    }
}
