//! The load generators' command lines and outputs: oha (open loop, fixed rate, corrected for
//! coordinated omission) and wrk (closed loop, maximum throughput). Pure: the runner spawns them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// The oha release the harness installs and was checked against (`-q`, `--latency-correction`,
/// `--output-format json`, `--worker-threads`).
pub const OHA_VERSION: &str = "1.16.0";

#[derive(Debug, Error, PartialEq)]
pub enum OutputError {
    #[error("oha output is not JSON: {0}")]
    NotJson(String),
    #[error("oha output has no {0}")]
    Missing(&'static str),
    #[error("wrk output has no {0}")]
    WrkMissing(&'static str),
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Latency {
    pub const NAMES: [&'static str; 4] = ["p50", "p90", "p99", "p99.9"];

    pub fn get(&self, i: usize) -> f64 {
        [self.p50, self.p90, self.p99, self.p999][i]
    }
}

/// What one oha run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OhaRun {
    pub latency: Option<Latency>,
    /// Requests answered (any status) plus transport errors.
    pub requests: u64,
    /// Requests per second over the run, as oha computes it (requests / elapsed).
    pub rps: f64,
    pub non_2xx: u64,
    pub errors: u64,
}

/// The arguments of one fixed-rate run (`n` requests at `rate`/s over `conns` connections).
pub fn oha_args(
    url: &str,
    rate: u32,
    n: u64,
    conns: u32,
    body: &Path,
    method: &str,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-n",
        &n.to_string(),
        "-q",
        &rate.to_string(),
        "--latency-correction",
        "-c",
        &conns.to_string(),
        // One runtime thread: oha is pinned to one CPU.
        "--worker-threads",
        "1",
        "--no-tui",
        "--output-format",
        "json",
        "-t",
        "10s",
        "-m",
        method,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if method != "GET" {
        a.extend([
            "-D".into(),
            body.display().to_string(),
            "-T".into(),
            "application/octet-stream".into(),
        ]);
    }
    a.push(url.to_owned());
    a
}

/// Parses oha's `--output-format json` (1.16): `latencyPercentiles` in seconds (null when no
/// request succeeded), `summary.requestsPerSec`, `statusCodeDistribution` and
/// `errorDistribution` as name → count maps.
pub fn parse_oha(json: &str) -> Result<OhaRun, OutputError> {
    let v: Value = serde_json::from_str(json).map_err(|e| OutputError::NotJson(e.to_string()))?;
    let count_map = |key: &'static str| -> Result<Vec<(String, u64)>, OutputError> {
        match v.get(key) {
            Some(Value::Object(m)) => Ok(m
                .iter()
                .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or(0)))
                .collect()),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(_) => Err(OutputError::Missing(key)),
        }
    };
    let statuses = count_map("statusCodeDistribution")?;
    let errors: u64 = count_map("errorDistribution")?.iter().map(|(_, c)| c).sum();
    let answered: u64 = statuses.iter().map(|(_, c)| c).sum();
    let non_2xx = statuses
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, c)| c)
        .sum();
    let rps = v
        .pointer("/summary/requestsPerSec")
        .and_then(Value::as_f64)
        .ok_or(OutputError::Missing("summary.requestsPerSec"))?;
    let pct = v
        .get("latencyPercentiles")
        .ok_or(OutputError::Missing("latencyPercentiles"))?;
    let us = |k: &str| pct.get(k).and_then(Value::as_f64).map(|s| s * 1e6);
    let latency = match (us("p50"), us("p90"), us("p99"), us("p99.9")) {
        (Some(p50), Some(p90), Some(p99), Some(p999)) => Some(Latency {
            p50,
            p90,
            p99,
            p999,
        }),
        _ => None,
    };
    Ok(OhaRun {
        latency,
        requests: answered + errors,
        rps,
        non_2xx,
        errors,
    })
}

/// A wrk script that sends `body_len` bytes with every request.
pub fn wrk_script(body_len: usize) -> String {
    format!(
        "wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n\
         wrk.body = string.rep(\"x\", {body_len})\n"
    )
}

pub fn wrk_args(url: &str, conns: u32, secs: f64, script: &Path) -> Vec<String> {
    vec![
        // One thread: wrk is pinned to one CPU.
        "-t1".into(),
        format!("-c{conns}"),
        format!("-d{}s", secs.round().max(1.0) as u64),
        "--timeout".into(),
        "5s".into(),
        "-s".into(),
        script.display().to_string(),
        url.to_owned(),
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WrkRun {
    pub requests: u64,
    pub secs: f64,
    pub rps: f64,
    pub socket_errors: u64,
    pub non_2xx: u64,
}

/// Parses wrk's text summary: `N requests in 6.00s, ...`, `Requests/sec: X`, and the optional
/// `Socket errors: connect a, read b, write c, timeout d` and `Non-2xx or 3xx responses: n`.
pub fn parse_wrk(text: &str) -> Result<WrkRun, OutputError> {
    let mut requests = None;
    let mut secs = None;
    let mut rps = None;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    for line in text.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
            secs = rest.split(',').next().and_then(parse_duration);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_ascii_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    Ok(WrkRun {
        requests: requests.ok_or(OutputError::WrkMissing("request count"))?,
        secs: secs.ok_or(OutputError::WrkMissing("duration"))?,
        rps: rps.ok_or(OutputError::WrkMissing("Requests/sec"))?,
        socket_errors,
        non_2xx,
    })
}

/// wrk's durations: `6.00s`, `500.12ms`, `1.00m`, `2.00us`.
fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    for (suffix, scale) in [
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ] {
        if let Some(n) = s.strip_suffix(suffix)
            && let Ok(v) = n.parse::<f64>()
        {
            return Some(v * scale);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from a real `oha 1.16.0 --output-format json` run.
    const OHA_JSON: &str = r#"{
      "summary": {"successRate": 1.0, "total": 0.493556947, "slowest": 0.003718717,
                  "fastest": 0.001242378, "average": 0.00159611528, "requestsPerSec": 101.30543254211352,
                  "totalData": 483200, "sizePerRequest": 9664, "sizePerSec": 979015.7},
      "latencyPercentiles": {"p10": 0.001383208, "p25": 0.001430338, "p50": 0.001521781,
                             "p75": 0.001615879, "p90": 0.001910408, "p95": 0.001959928,
                             "p99": 0.003718717, "p99.9": 0.0037187, "p99.99": 0.003718717},
      "rps": {"mean": 102.5},
      "statusCodeDistribution": {"200": 48, "503": 2},
      "errorDistribution": {"connection closed before message completed": 3}
    }"#;

    #[test]
    fn parses_oha_json() {
        let r = parse_oha(OHA_JSON).unwrap();
        let l = r.latency.unwrap();
        assert!((l.p50 - 1521.781).abs() < 1e-6);
        assert!((l.p90 - 1910.408).abs() < 1e-6);
        assert!((l.p99 - 3718.717).abs() < 1e-6);
        assert!((l.p999 - 3718.7).abs() < 1e-6);
        assert_eq!(r.requests, 53);
        assert_eq!(r.non_2xx, 2);
        assert_eq!(r.errors, 3);
        assert!((r.rps - 101.305).abs() < 1e-3);
    }

    #[test]
    fn oha_without_successes_has_no_latency() {
        let json = r#"{"summary": {"requestsPerSec": 0.0},
            "latencyPercentiles": {"p50": null, "p90": null, "p99": null, "p99.9": null},
            "statusCodeDistribution": {}, "errorDistribution": {"connection refused": 10}}"#;
        let r = parse_oha(json).unwrap();
        assert_eq!(r.latency, None);
        assert_eq!(r.errors, 10);
        assert_eq!(r.requests, 10);
    }

    #[test]
    fn oha_garbage_is_an_error() {
        assert!(matches!(parse_oha("oops"), Err(OutputError::NotJson(_))));
        assert_eq!(
            parse_oha(r#"{"latencyPercentiles": {}}"#),
            Err(OutputError::Missing("summary.requestsPerSec"))
        );
    }

    #[test]
    fn oha_command_line() {
        let a = oha_args(
            "http://127.0.0.1:1/echo",
            1000,
            20_000,
            16,
            Path::new("/b"),
            "POST",
        );
        let s = a.join(" ");
        assert!(s.starts_with("-n 20000 -q 1000 --latency-correction -c 16 --worker-threads 1"));
        assert!(s.ends_with("-m POST -D /b -T application/octet-stream http://127.0.0.1:1/echo"));
        assert!(!oha_args("u", 1, 1, 1, Path::new("/b"), "GET").contains(&"-D".to_string()));
    }

    const WRK_OUT: &str = "\
Running 6s test @ http://127.0.0.1:40001/echo
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms  512.00us  12.00ms   90.00%
    Req/Sec    20.61k     1.02k   22.00k    80.00%
  123456 requests in 6.00s, 140.12MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  20576.00
Transfer/sec:     23.35MB
";

    #[test]
    fn parses_wrk_output() {
        let r = parse_wrk(WRK_OUT).unwrap();
        assert_eq!(r.requests, 123456);
        assert_eq!(r.secs, 6.0);
        assert_eq!(r.rps, 20576.0);
        assert_eq!(r.socket_errors, 7);
        assert_eq!(r.non_2xx, 5);
        let clean = "  10 requests in 500.00ms, 1KB read\nRequests/sec: 20.00\n";
        let r = parse_wrk(clean).unwrap();
        assert_eq!((r.secs, r.socket_errors, r.non_2xx), (0.5, 0, 0));
        assert_eq!(
            parse_wrk("unable to connect to 127.0.0.1:1 Connection refused"),
            Err(OutputError::WrkMissing("request count"))
        );
    }

    #[test]
    fn wrk_command_line_and_script() {
        assert_eq!(
            wrk_args("http://h/echo", 16, 6.0, Path::new("/s.lua")).join(" "),
            "-t1 -c16 -d6s --timeout 5s -s /s.lua http://h/echo"
        );
        assert!(wrk_script(1024).contains("string.rep(\"x\", 1024)"));
    }
}
