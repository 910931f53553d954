//! Dapr's run file (`dapr run -f dapr.yaml`, Multi-App Run), read as the Dapr CLI reads it
//! (`dapr/cli` `pkg/runfileconfig`): `version`, `name`, `common` and `apps[]`, relative paths
//! resolved against the file's folder (an app's own against its `appDirPath`), `common`'s
//! settings used where an app has none, the app's `.dapr/resources` and `.dapr/config.yaml`
//! before `common`'s. Unlike Dapr, an unknown key or a wrong type is an error naming the file,
//! the app and the key, not silently dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use ferry_api::AppId;
use serde_json::{Map, Value};

use crate::run::Destination;

/// A run file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFile {
    /// Where it was read from, absolute (`None`: standard input).
    pub path: Option<PathBuf>,
    /// How messages name it.
    pub shown: String,
    pub name: Option<String>,
    pub apps: Vec<App>,
    /// Keys that are accepted but do nothing in Ferry, said once each.
    pub warnings: Vec<String>,
}

/// One app of a run file: what its `ferry run` is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub app_id: String,
    /// `appDirPath`: the app's working directory, and where `.dapr/logs` go.
    pub dir: PathBuf,
    /// Empty: the sidecar only.
    pub command: Vec<String>,
    /// `common.env` and the app's `env` (the app's win).
    pub env: BTreeMap<String, String>,
    /// `ferry run` flags from the file's settings (ports picked at start and the output flags
    /// are added then).
    pub flags: Vec<String>,
    pub http_port: Option<u16>,
    pub grpc_port: Option<u16>,
    pub app_log: Destination,
    pub daprd_log: Destination,
}

/// What is wrong with a run file; the text names the file, the app and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RunFileError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Only under an app.
    App,
    /// Under an app or in `common`.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Port,
    Int,
    Bool,
    /// A quantity such as `4Mi`, or a number of bytes.
    Size,
    StrList,
    Map,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Becomes this `ferry run` flag.
    Flag(&'static str),
    /// Read by this module.
    Special,
    /// Refused when set: why.
    Refuse(&'static str),
    /// Accepted and ignored, with a warning: why.
    Ignore(&'static str),
}

const KUBERNETES_ONLY: &str =
    "it is used only with -k (Kubernetes), which ferry run does not support; ignored";

/// Every key Dapr's run file knows (`RunConfig`, `SharedRunConfig`, `App` and
/// `ContainerConfiguration` in `dapr/cli`).
const KEYS: &[(&str, Scope, Kind, Use)] = &[
    ("appID", Scope::App, Kind::Str, Use::Special),
    ("appDirPath", Scope::App, Kind::Str, Use::Special),
    ("command", Scope::App, Kind::StrList, Use::Special),
    ("appPort", Scope::App, Kind::Port, Use::Flag("--app-port")),
    (
        "appChannelAddress",
        Scope::App,
        Kind::Str,
        Use::Flag("--app-channel-address"),
    ),
    ("daprHTTPPort", Scope::App, Kind::Port, Use::Special),
    ("daprGRPCPort", Scope::App, Kind::Port, Use::Special),
    (
        "daprInternalGRPCPort",
        Scope::App,
        Kind::Port,
        Use::Flag("--dapr-internal-grpc-port"),
    ),
    (
        "metricsPort",
        Scope::App,
        Kind::Port,
        Use::Flag("--metrics-port"),
    ),
    (
        "profilePort",
        Scope::App,
        Kind::Port,
        Use::Refuse("profiling is not supported yet: Ferry has no pprof endpoint"),
    ),
    (
        "unixDomainSocket",
        Scope::App,
        Kind::Str,
        Use::Refuse(
            "Unix domain sockets are not supported yet: Ferry's APIs listen on TCP ports (use daprHTTPPort)",
        ),
    ),
    (
        "containerImage",
        Scope::App,
        Kind::Str,
        Use::Ignore(KUBERNETES_ONLY),
    ),
    (
        "containerImagePullPolicy",
        Scope::App,
        Kind::Str,
        Use::Ignore(KUBERNETES_ONLY),
    ),
    (
        "createService",
        Scope::App,
        Kind::Bool,
        Use::Ignore(KUBERNETES_ONLY),
    ),
    ("configFilePath", Scope::Shared, Kind::Str, Use::Special),
    (
        "appProtocol",
        Scope::Shared,
        Kind::Str,
        Use::Flag("--app-protocol"),
    ),
    (
        "apiListenAddresses",
        Scope::Shared,
        Kind::Str,
        Use::Flag("--dapr-listen-addresses"),
    ),
    (
        "enableProfiling",
        Scope::Shared,
        Kind::Bool,
        Use::Refuse("profiling is not supported yet: Ferry has no pprof endpoint"),
    ),
    (
        "logLevel",
        Scope::Shared,
        Kind::Str,
        Use::Flag("--log-level"),
    ),
    (
        "appMaxConcurrency",
        Scope::Shared,
        Kind::Int,
        Use::Flag("--app-max-concurrency"),
    ),
    (
        "placementHostAddress",
        Scope::Shared,
        Kind::Str,
        Use::Ignore(
            "Ferry has no actors or workflows, which use Dapr's placement service; ignored",
        ),
    ),
    (
        "schedulerHostAddress",
        Scope::Shared,
        Kind::Str,
        Use::Ignore("Ferry has no jobs or workflows, which use Dapr's scheduler service; ignored"),
    ),
    ("resourcesPath", Scope::Shared, Kind::Str, Use::Special),
    ("resourcesPaths", Scope::Shared, Kind::StrList, Use::Special),
    ("appSSL", Scope::Shared, Kind::Bool, Use::Flag("--app-ssl")),
    (
        "maxBodySize",
        Scope::Shared,
        Kind::Size,
        Use::Flag("--max-body-size"),
    ),
    (
        "readBufferSize",
        Scope::Shared,
        Kind::Size,
        Use::Flag("--read-buffer-size"),
    ),
    (
        "enableAppHealthCheck",
        Scope::Shared,
        Kind::Bool,
        Use::Flag("--enable-app-health-check"),
    ),
    (
        "appHealthCheckPath",
        Scope::Shared,
        Kind::Str,
        Use::Flag("--app-health-check-path"),
    ),
    (
        "appHealthProbeInterval",
        Scope::Shared,
        Kind::Int,
        Use::Flag("--app-health-probe-interval"),
    ),
    (
        "appHealthProbeTimeout",
        Scope::Shared,
        Kind::Int,
        Use::Flag("--app-health-probe-timeout"),
    ),
    (
        "appHealthThreshold",
        Scope::Shared,
        Kind::Int,
        Use::Flag("--app-health-threshold"),
    ),
    (
        "enableApiLogging",
        Scope::Shared,
        Kind::Bool,
        Use::Flag("--enable-api-logging"),
    ),
    (
        "runtimePath",
        Scope::Shared,
        Kind::Str,
        Use::Ignore(
            "ferry runs its sidecar in its own process, there is no runtime to find; ignored",
        ),
    ),
    ("env", Scope::Shared, Kind::Map, Use::Special),
    (
        "daprdLogDestination",
        Scope::Shared,
        Kind::Str,
        Use::Special,
    ),
    ("appLogDestination", Scope::Shared, Kind::Str, Use::Special),
];

const TOP_KEYS: &[&str] = &["version", "name", "common", "apps"];

/// The file `-f` names: the file itself, `dapr.yaml` in a directory, or `-` for standard input.
pub fn locate(given: &Path) -> Result<Option<PathBuf>, RunFileError> {
    if given == Path::new("-") {
        return Ok(None);
    }
    let path = if given.is_dir() {
        given.join("dapr.yaml")
    } else {
        given.to_owned()
    };
    let abs = std::path::absolute(&path).unwrap_or(path.clone());
    if !abs.is_file() {
        return Err(RunFileError(if given.is_dir() {
            format!(
                "{}: the directory has no dapr.yaml (name the run file itself with -f)",
                given.display()
            )
        } else {
            format!("{}: no such run file", given.display())
        }));
    }
    Ok(Some(abs))
}

/// Reads and checks the run file `-f` names.
pub fn load(given: &Path) -> Result<RunFile, RunFileError> {
    let path = locate(given)?;
    let (text, shown, base) = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| RunFileError(format!("{}: cannot read it: {e}", p.display())))?;
            let base = p.parent().map(Path::to_owned).unwrap_or_default();
            (text, p.display().to_string(), base)
        }
        None => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| RunFileError(format!("standard input: cannot read it: {e}")))?;
            let cwd = std::env::current_dir()
                .map_err(|e| RunFileError(format!("cannot find the current directory: {e}")))?;
            (text, "<standard input>".to_owned(), cwd)
        }
    };
    let mut file = parse(&text, &shown, &base)?;
    file.path = path;
    Ok(file)
}

/// Checks a run file's text; relative paths are resolved against `base`.
pub fn parse(text: &str, shown: &str, base: &Path) -> Result<RunFile, RunFileError> {
    let err = |msg: String| RunFileError(format!("{shown}: {msg}"));
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| err(format!("not YAML: {e}")))?;
    let Value::Object(top) = doc else {
        return Err(err(
            "expected a mapping with version, common and apps".into()
        ));
    };
    for key in top.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            return Err(err(unknown(key, TOP_KEYS.iter().copied())));
        }
    }
    match top.get("version") {
        Some(Value::Number(n)) if n.as_i64() == Some(1) => {}
        Some(other) => {
            return Err(err(format!(
                "version: expected 1 (the only run file version), got {}",
                shown_value(other)
            )));
        }
        None => {
            return Err(err(
                "the required key version is missing (write version: 1)".into(),
            ));
        }
    }
    let name = match top.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(err(format!(
                "name: expected a string, got {}",
                shown_value(other)
            )));
        }
    };
    let common = match top.get("common") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(err(format!(
                "common: expected a mapping, got {}",
                shown_value(other)
            )));
        }
    };
    let mut warnings = BTreeSet::new();
    check_section(&common, "common", Scope::Shared, &mut warnings).map_err(err)?;
    let apps = match top.get("apps") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(err("apps: no apps to run (list them under apps:)".into()));
        }
        Some(other) => {
            return Err(err(format!(
                "apps: expected a list of apps, got {}",
                shown_value(other)
            )));
        }
    };

    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, app) in apps.iter().enumerate() {
        let Value::Object(app) = app else {
            return Err(err(format!(
                "apps[{i}]: expected a mapping, got {}",
                shown_value(app)
            )));
        };
        let label = match app.get("appID") {
            Some(Value::String(id)) => format!("app {id:?} (apps[{i}])"),
            _ => format!("apps[{i}]"),
        };
        let app = build_app(app, &common, base, &mut warnings)
            .map_err(|m| err(format!("{label}: {m}")))?;
        if !seen.insert(app.app_id.clone()) {
            return Err(err(format!(
                "{label}: app ID {:?} is used by an earlier app too; give each app its own appID",
                app.app_id
            )));
        }
        out.push(app);
    }
    Ok(RunFile {
        path: None,
        shown: shown.to_owned(),
        name,
        apps: out,
        warnings: warnings.into_iter().collect(),
    })
}

/// Refuses unknown, misplaced and mistyped keys; collects the warnings of ignored ones.
fn check_section(
    section: &Map<String, Value>,
    place: &str,
    scope: Scope,
    warnings: &mut BTreeSet<String>,
) -> Result<(), String> {
    for (key, value) in section {
        let Some((_, key_scope, kind, used)) = KEYS.iter().find(|(k, ..)| k == key) else {
            let known = KEYS
                .iter()
                .filter(|(_, s, ..)| scope == Scope::App || *s == Scope::Shared)
                .map(|(k, ..)| *k);
            return Err(unknown(key, known));
        };
        if scope == Scope::Shared && *key_scope == Scope::App {
            return Err(format!(
                "{key} is a setting of each app, not of {place}: move it under the app"
            ));
        }
        if value.is_null() {
            continue;
        }
        check_kind(key, *kind, value)?;
        match used {
            Use::Refuse(why) if is_set(value) => return Err(format!("{key}: {why}")),
            Use::Ignore(why) => {
                warnings.insert(format!("{key}: {why}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `false`, `0` and `""` are Dapr's "not set".
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64() != Some(0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn check_kind(key: &str, kind: Kind, v: &Value) -> Result<(), String> {
    let ok = match kind {
        Kind::Str => v.is_string(),
        Kind::Port => v
            .as_i64()
            .is_some_and(|n| n == -1 || n == 0 || (1..=65535).contains(&n)),
        Kind::Int => v.is_i64(),
        Kind::Bool => v.is_boolean(),
        Kind::Size => v.is_string() || v.is_u64(),
        Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Kind::Map => v
            .as_object()
            .is_some_and(|m| m.values().all(|x| !(x.is_array() || x.is_object()))),
    };
    if ok {
        return Ok(());
    }
    let want = match kind {
        Kind::Str => "a string",
        Kind::Port => "a port number from 1 to 65535",
        Kind::Int => "a whole number",
        Kind::Bool => "true or false",
        Kind::Size => "a quantity such as 4Mi, or a number of bytes",
        Kind::StrList if key == "command" => "a list of strings, such as [\"python3\", \"app.py\"]",
        Kind::StrList => "a list of strings",
        Kind::Map => "a mapping of names to plain values",
    };
    Err(format!("{key}: expected {want}, got {}", shown_value(v)))
}

fn shown_value(v: &Value) -> String {
    match v {
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
        Value::Null => "nothing".into(),
        other => other.to_string(),
    }
}

fn unknown<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> String {
    let lower = key.to_ascii_lowercase();
    let best = known
        .map(|k| {
            (
                strsim::damerau_levenshtein(&lower, &k.to_ascii_lowercase()),
                k,
            )
        })
        .min();
    match best {
        Some((d, k)) if d <= 3.max(key.len() / 3) => {
            format!("unknown key {key:?} (did you mean {k:?}?)")
        }
        _ => format!("unknown key {key:?}"),
    }
}

/// A setting of the app, else of `common`.
fn setting<'a>(
    app: &'a Map<String, Value>,
    common: &'a Map<String, Value>,
    key: &str,
) -> Option<(&'a Value, bool)> {
    match app.get(key).filter(|v| !v.is_null()) {
        Some(v) => Some((v, true)),
        None => common.get(key).filter(|v| !v.is_null()).map(|v| (v, false)),
    }
}

fn build_app(
    app: &Map<String, Value>,
    common: &Map<String, Value>,
    base: &Path,
    warnings: &mut BTreeSet<String>,
) -> Result<App, String> {
    check_section(app, "the app", Scope::App, warnings)?;

    let dir = match app.get("appDirPath").and_then(Value::as_str) {
        Some(d) if !d.trim().is_empty() => resolve(base, d),
        _ => {
            return Err("the required key appDirPath is missing (the app's directory, relative to the run file)".into());
        }
    };
    if !dir.is_dir() {
        return Err(format!("appDirPath: {} is not a directory", dir.display()));
    }
    let app_id = match app.get("appID").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_owned(),
        // Dapr's default: the directory's name.
        _ => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    AppId::new(&app_id).map_err(|e| format!("appID: {e}"))?;

    let command: Vec<String> = app
        .get("command")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    let mut env = BTreeMap::new();
    for source in [common.get("env"), app.get("env")].into_iter().flatten() {
        if let Value::Object(m) = source {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                env.insert(k.clone(), v);
            }
        }
    }

    let mut flags = vec!["--app-id".to_owned(), app_id.clone()];
    for (key, _, kind, used) in KEYS {
        let Use::Flag(flag) = used else { continue };
        let Some((value, _)) = setting(app, common, key) else {
            continue;
        };
        let text = match (kind, value) {
            (Kind::Bool, Value::Bool(b)) => {
                flags.push(format!("{flag}={b}"));
                continue;
            }
            // Dapr's "not set" for ports and the health numbers.
            (Kind::Port | Kind::Int, Value::Number(n))
                if n.as_i64() == Some(0)
                    || (n.as_i64() == Some(-1) && *key != "appMaxConcurrency") =>
            {
                continue;
            }
            (_, Value::String(s)) if *key == "appProtocol" => s.to_ascii_lowercase(),
            (_, Value::String(s)) => s.clone(),
            (_, other) => other.to_string(),
        };
        check_flag(flag, &text).map_err(|e| format!("{key}: {e}"))?;
        flags.push(flag.to_string());
        flags.push(text);
    }

    // Resources: the app's, else its .dapr/resources, else common's (Dapr's order).
    let paths = |section: &Map<String, Value>, from: &Path| -> Result<Vec<PathBuf>, String> {
        let mut out = Vec::new();
        if let Some(Value::Array(list)) = section.get("resourcesPaths") {
            for p in list.iter().filter_map(Value::as_str) {
                out.push(existing(from, p, "resourcesPaths")?);
            }
        }
        if let Some(Value::String(p)) = section.get("resourcesPath")
            && !p.trim().is_empty()
        {
            out.push(existing(from, p, "resourcesPath")?);
        }
        Ok(out)
    };
    let mut resources = paths(app, &dir)?;
    let common_resources = paths(common, base).map_err(|e| format!("common's {e}"))?;
    if resources.is_empty() {
        let local = dir.join(".dapr").join("resources");
        resources = if local.is_dir() {
            vec![local]
        } else {
            common_resources
        };
    }
    for r in resources {
        flags.push("--resources-path".into());
        flags.push(r.display().to_string());
    }

    // Configuration: the app's, else its .dapr/config.yaml, else common's.
    let config = match app.get("configFilePath").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => Some(existing(&dir, c, "configFilePath")?),
        _ => {
            let local = dir.join(".dapr").join("config.yaml");
            if local.is_file() {
                Some(local)
            } else {
                match common.get("configFilePath").and_then(Value::as_str) {
                    Some(c) if !c.is_empty() => Some(
                        existing(base, c, "configFilePath").map_err(|e| format!("common's {e}"))?,
                    ),
                    _ => None,
                }
            }
        }
    };
    if let Some(c) = config {
        flags.push("--config".into());
        flags.push(c.display().to_string());
    }

    let port = |key: &str| -> Option<u16> {
        app.get(key)
            .and_then(Value::as_i64)
            .filter(|n| *n > 0)
            .map(|n| n as u16)
    };
    let destination = |key: &str, default: Destination| -> Result<Destination, String> {
        match setting(app, common, key) {
            None => Ok(default),
            Some((Value::String(s), _)) => match s.as_str() {
                "console" => Ok(Destination::Console),
                "file" => Ok(Destination::File),
                "fileAndConsole" => Ok(Destination::FileAndConsole),
                other => Err(format!(
                    "{key}: {other:?} is not a log destination (console, file or fileAndConsole)"
                )),
            },
            Some((other, _)) => Err(format!(
                "{key}: expected a string, got {}",
                shown_value(other)
            )),
        }
    };
    Ok(App {
        app_id,
        dir,
        command,
        env,
        flags,
        http_port: port("daprHTTPPort"),
        grpc_port: port("daprGRPCPort"),
        // Dapr's defaults: the app's output on the console and in a file, the sidecar's in a file.
        app_log: destination("appLogDestination", Destination::FileAndConsole)?,
        daprd_log: destination("daprdLogDestination", Destination::File)?,
    })
}

/// A flag's value, checked as `ferry run` will check it, so that the message names the key.
fn check_flag(flag: &str, value: &str) -> Result<(), String> {
    match crate::parse(["ferry", "run", "--app-id", "x", flag, value]) {
        Ok(_) => Ok(()),
        Err(e) => Err(ferry_api::usage::clap_error_line(&e).unwrap_or_else(|| e.to_string())),
    }
}

/// `~/` is the home directory; a relative path is relative to `base`.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    };
    let joined = if p.is_absolute() { p } else { base.join(p) };
    normalize(&joined)
}

/// Removes `.` and resolves `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn existing(base: &Path, p: &str, key: &str) -> Result<PathBuf, String> {
    let path = resolve(base, p);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{key}: {} does not exist", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("ferry-runfile-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("cart")).unwrap();
            std::fs::create_dir_all(p.join("checkout/.dapr/resources")).unwrap();
            std::fs::create_dir_all(p.join("shared")).unwrap();
            Self(p)
        }

        fn parse(&self, text: &str) -> Result<RunFile, RunFileError> {
            parse(text, "dapr.yaml", &self.0)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_run_file_becomes_each_apps_ferry_run() {
        let d = Dir::new("ok");
        let f = d
            .parse(
                r#"
version: 1
name: shop
common:
  resourcesPath: ./shared
  appProtocol: HTTP
  logLevel: debug
  env:
    DEBUG: false
    LEVEL: 3
apps:
  - appDirPath: ./cart/
    appPort: 5000
    daprHTTPPort: 3500
    appHealthProbeTimeout: 0
    command: ["python3", "app.py"]
    env:
      DEBUG: true
  - appID: checkout
    appDirPath: checkout
    enableApiLogging: true
    appLogDestination: console
    placementHostAddress: localhost:50005
"#,
            )
            .unwrap();
        assert_eq!(f.name.as_deref(), Some("shop"));
        let [cart, checkout] = &f.apps[..] else {
            panic!("{f:?}")
        };
        assert_eq!(cart.app_id, "cart", "the directory's name");
        assert_eq!(cart.dir, d.0.join("cart"));
        assert_eq!(cart.command, ["python3", "app.py"]);
        assert_eq!(cart.http_port, Some(3500));
        assert_eq!(cart.grpc_port, None);
        assert_eq!(cart.env["DEBUG"], "true", "the app's env wins");
        assert_eq!(cart.env["LEVEL"], "3");
        let shared = d.0.join("shared").display().to_string();
        assert_eq!(
            cart.flags,
            [
                "--app-id",
                "cart",
                "--app-port",
                "5000",
                "--app-protocol",
                "http",
                "--log-level",
                "debug",
                "--resources-path",
                &shared,
            ]
        );
        assert_eq!(cart.app_log, Destination::FileAndConsole);
        assert_eq!(cart.daprd_log, Destination::File);

        assert!(checkout.command.is_empty());
        let local = d.0.join("checkout/.dapr/resources").display().to_string();
        assert_eq!(
            checkout.flags,
            [
                "--app-id",
                "checkout",
                "--app-protocol",
                "http",
                "--log-level",
                "debug",
                "--enable-api-logging=true",
                "--resources-path",
                &local,
            ],
            "the app's own .dapr/resources comes before common's"
        );
        assert_eq!(checkout.app_log, Destination::Console);
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(f.warnings[0].starts_with("placementHostAddress: "));
    }

    #[test]
    fn bad_files_are_refused_naming_file_app_and_key() {
        let d = Dir::new("bad");
        let cases = [
            (
                "apps: []\n",
                "dapr.yaml: the required key version is missing",
            ),
            ("version: 2\napps: []\n", "dapr.yaml: version: expected 1"),
            ("version: 1\napps: []\n", "dapr.yaml: apps: no apps to run"),
            (
                "version: 1\nap: []\n",
                "dapr.yaml: unknown key \"ap\" (did you mean \"apps\"?)",
            ),
            (
                "version: 1\napps:\n  - appID: cart\n    appDirPath: cart\n    appPrt: 5000\n",
                "dapr.yaml: app \"cart\" (apps[0]): unknown key \"appPrt\" (did you mean \"appPort\"?)",
            ),
            (
                "version: 1\napps:\n  - appID: cart\n    appDirPath: cart\n    appPort: abc\n",
                "dapr.yaml: app \"cart\" (apps[0]): appPort: expected a port number from 1 to 65535, got \"abc\"",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n    command: python3 app.py\n",
                "dapr.yaml: apps[0]: command: expected a list of strings, such as [\"python3\", \"app.py\"], got \"python3 app.py\"",
            ),
            (
                "version: 1\ncommon:\n  appPort: 5000\napps:\n  - appDirPath: cart\n",
                "dapr.yaml: appPort is a setting of each app, not of common",
            ),
            (
                "version: 1\ncommon:\n  logLevel: loud\napps:\n  - appDirPath: cart\n",
                "dapr.yaml: apps[0]: logLevel: invalid value 'loud' for '--log-level",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n    maxBodySize: 4MB\n",
                "dapr.yaml: apps[0]: maxBodySize: invalid value '4MB' for '--max-body-size",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n    appProtocol: grpc\n",
                "dapr.yaml: apps[0]: appProtocol: invalid value 'grpc' for '--app-protocol <APP_PROTOCOL>': grpc is not supported yet",
            ),
            (
                "version: 1\napps:\n  - appDirPath: nowhere\n",
                "dapr.yaml: apps[0]: appDirPath: ",
            ),
            (
                "version: 1\napps:\n  - appID: cart\n",
                "dapr.yaml: app \"cart\" (apps[0]): the required key appDirPath is missing",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n  - appID: cart\n    appDirPath: checkout\n",
                "dapr.yaml: app \"cart\" (apps[1]): app ID \"cart\" is used by an earlier app too",
            ),
            (
                "version: 1\napps:\n  - appID: a.b\n    appDirPath: cart\n",
                "dapr.yaml: app \"a.b\" (apps[0]): appID: ",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n    unixDomainSocket: /tmp\n",
                "dapr.yaml: apps[0]: unixDomainSocket: Unix domain sockets are not supported yet",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n    resourcesPath: ./missing\n",
                "dapr.yaml: apps[0]: resourcesPath: ",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n    appLogDestination: screen\n",
                "dapr.yaml: apps[0]: appLogDestination: \"screen\" is not a log destination",
            ),
            (
                "version: 1\napps:\n  - appDirPath: cart\n    env:\n      A: [1]\n",
                "dapr.yaml: apps[0]: env: expected a mapping of names to plain values, got a mapping",
            ),
            ("- 1\n", "dapr.yaml: expected a mapping"),
        ];
        for (text, want) in cases {
            let e = d.parse(text).unwrap_err().0;
            assert!(
                e.starts_with(want),
                "{text}\n  gave: {e}\n  want: {want}..."
            );
        }
    }

    #[test]
    fn enable_profiling_false_is_fine() {
        let d = Dir::new("prof");
        d.parse("version: 1\napps:\n  - appDirPath: cart\n    enableProfiling: false\n")
            .unwrap();
    }
}
