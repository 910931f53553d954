//! The image map: which local executable stands in for a container image.
//!
//! ```yaml
//! root: ..                      # relative `exec` paths start here (relative to this file)
//! images:
//!   - match: "ghcr.io/ferry-dev/ferryd:*"
//!     exec: target/debug/ferryd
//!   - match: "docker.io/library/busybox:*"
//!     exec: /bin/sh
//!     honourCommand: true
//! ```
//!
//! `match` is a glob (`*` any run of characters, `?` one character) tried against the image as
//! written and against its normalized form (`busybox` → `docker.io/library/busybox:latest`).
//! The first matching rule wins; `--image PATTERN=EXEC` flags come before the file's rules.
//!
//! Command and args: by default the mapped executable *is* the image, so a container's
//! `command[0]` is replaced by it and `command[1..]` followed by `args` become its arguments
//! (without `command`, `args` alone). With `honourCommand: true` the image is a toolbox: a
//! container's `command` runs as given (looked up in the container's `PATH`) and the mapped
//! executable is only the entrypoint used when `command` is empty.
//!
//! Like a real image, a rule may also have a default `cmd` (the image's CMD: the arguments used
//! when the container sets neither `command` nor `args`) and a `workingDir` (the image's
//! WORKDIR, relative to `root`; used when the container sets none):
//!
//! ```yaml
//!   - match: "ferry.test/cart:*"
//!     exec: deploy/samples/cart/.venv/bin/python
//!     cmd: [app.py]
//!     workingDir: deploy/samples/cart
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ImageMapError {
    #[error("image map {}: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image map {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("--image {spec:?}: expected PATTERN=EXECUTABLE")]
    Override { spec: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    root: Option<PathBuf>,
    images: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    #[serde(rename = "match")]
    pattern: String,
    exec: PathBuf,
    #[serde(default)]
    honour_command: bool,
    #[serde(default)]
    cmd: Vec<String>,
    working_dir: Option<PathBuf>,
}

/// One image pattern and the executable that stands in for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRule {
    pub pattern: String,
    pub exec: PathBuf,
    pub honour_command: bool,
    /// The image's default arguments (CMD).
    pub cmd: Vec<String>,
    /// The image's working directory (WORKDIR), absolute.
    pub working_dir: Option<PathBuf>,
}

/// What to run for one container: a program and its arguments (argv[1..]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
}

impl ImageRule {
    /// Applies the command/args rule described in the module documentation.
    pub fn launch(&self, command: &[String], args: &[String]) -> Launch {
        let exec = self.exec.display().to_string();
        match command.split_first() {
            None if args.is_empty() => Launch {
                program: exec,
                args: self.cmd.clone(),
            },
            None => Launch {
                program: exec,
                args: args.to_vec(),
            },
            Some((first, rest)) => Launch {
                program: if self.honour_command {
                    first.clone()
                } else {
                    exec
                },
                args: rest.iter().chain(args).cloned().collect(),
            },
        }
    }
}

/// The loaded map: `--image` overrides first, then the file's rules in order.
#[derive(Debug, Clone)]
pub struct ImageMap {
    source: PathBuf,
    rules: Vec<ImageRule>,
}

impl ImageMap {
    /// Reads the map file; relative `exec` paths resolve against its `root` (default: the file's
    /// directory), relative override paths against `cwd`.
    pub fn load(path: &Path, overrides: &[String], cwd: &Path) -> Result<Self, ImageMapError> {
        let path = cwd.join(path);
        let text = std::fs::read_to_string(&path).map_err(|source| ImageMapError::Read {
            path: path.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let mut rules = overrides
            .iter()
            .map(|spec| parse_override(spec, cwd))
            .collect::<Result<Vec<_>, _>>()?;
        rules.extend(parse(&text, base).map_err(|message| ImageMapError::Parse {
            path: path.clone(),
            message,
        })?);
        Ok(Self {
            source: path,
            rules,
        })
    }

    #[cfg(test)]
    pub fn from_rules(source: &str, rules: Vec<ImageRule>) -> Self {
        Self {
            source: source.into(),
            rules,
        }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn rules(&self) -> &[ImageRule] {
        &self.rules
    }

    pub fn resolve(&self, image: &str) -> Option<&ImageRule> {
        let normalized = normalize(image);
        self.rules
            .iter()
            .find(|r| glob_match(&r.pattern, image) || glob_match(&r.pattern, &normalized))
    }
}

fn parse(text: &str, base: &Path) -> Result<Vec<ImageRule>, String> {
    let file: MapFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let root = match file.root {
        Some(root) => clean(&base.join(root)),
        None => base.to_path_buf(),
    };
    file.images
        .into_iter()
        .map(|r| {
            if r.pattern.is_empty() {
                return Err("an entry has an empty `match`".to_owned());
            }
            Ok(ImageRule {
                pattern: r.pattern,
                // A bare name (`node`) is looked up in the containers' default PATH, like an
                // image whose entrypoint is a program from its base layer.
                exec: if r.exec.components().count() == 1 && r.exec.is_relative() {
                    in_default_path(&r.exec)
                } else {
                    clean(&root.join(r.exec))
                },
                honour_command: r.honour_command,
                cmd: r.cmd,
                working_dir: r.working_dir.map(|d| clean(&root.join(d))),
            })
        })
        .collect()
}

fn parse_override(spec: &str, cwd: &Path) -> Result<ImageRule, ImageMapError> {
    match spec.split_once('=') {
        Some((pattern, exec)) if !pattern.is_empty() && !exec.is_empty() => Ok(ImageRule {
            pattern: pattern.to_owned(),
            exec: clean(&cwd.join(exec)),
            honour_command: false,
            cmd: Vec::new(),
            working_dir: None,
        }),
        _ => Err(ImageMapError::Override {
            spec: spec.to_owned(),
        }),
    }
}

/// `name` found in the directories of the containers' default PATH, else `name` itself (which
/// then fails the executable check with its name in the message).
fn in_default_path(name: &Path) -> PathBuf {
    crate::env::DEFAULT_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.to_path_buf())
}

/// Lexically removes `.` and `..` so that paths in messages read well.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `*` matches any run of characters (including `/`), `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The fully qualified form of an image reference, as container runtimes read it:
/// `busybox` → `docker.io/library/busybox:latest`, `ghcr.io/x/y` → `ghcr.io/x/y:latest`.
pub fn normalize(image: &str) -> String {
    let (name, suffix) = match image.split_once('@') {
        Some((name, digest)) => (name, format!("@{digest}")),
        None => (image, String::new()),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let (name, tag) = match last.rsplit_once(':') {
        Some(_) => (name.to_owned(), String::new()),
        None if suffix.is_empty() => (name.to_owned(), ":latest".to_owned()),
        None => (name.to_owned(), String::new()),
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let name = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{name}{tag}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, exec: &str, honour_command: bool) -> ImageRule {
        ImageRule {
            pattern: pattern.into(),
            exec: exec.into(),
            honour_command,
            cmd: Vec::new(),
            working_dir: None,
        }
    }

    #[test]
    fn image_cmd_and_working_dir() {
        let text = "root: ..\nimages:\n  - match: \"ferry.test/cart:*\"\n    exec: s/cart/.venv/bin/python\n    cmd: [app.py]\n    workingDir: s/cart\n";
        let rules = parse(text, Path::new("/repo/e2e")).unwrap();
        let r = &rules[0];
        assert_eq!(r.working_dir.as_deref(), Some(Path::new("/repo/s/cart")));
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // Neither command nor args: the image's CMD.
        assert_eq!(r.launch(&[], &[]).args, s(&["app.py"]));
        // args replace CMD; a command replaces both (the entrypoint is still the image).
        assert_eq!(r.launch(&[], &s(&["other.py"])).args, s(&["other.py"]));
        assert_eq!(r.launch(&s(&["python", "-V"]), &[]).args, s(&["-V"]));
        assert_eq!(r.launch(&[], &[]).program, "/repo/s/cart/.venv/bin/python");
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "ghcr.io/ferry-dev/ferryd:*",
            "ghcr.io/ferry-dev/ferryd:0.1.0"
        ));
        assert!(glob_match("*/busybox:*", "docker.io/library/busybox:1.36"));
        assert!(glob_match("ferry.test/app-?:*", "ferry.test/app-a:1"));
        assert!(!glob_match(
            "ghcr.io/ferry-dev/ferryd:*",
            "ghcr.io/ferry-dev/ferryd2:1"
        ));
        assert!(!glob_match("ferry.test/testapp:*", "ferry.test/testapp"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn normalizes_like_a_runtime() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(normalize("bitnami/redis"), "docker.io/bitnami/redis:latest");
        assert_eq!(normalize("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
        assert_eq!(normalize("localhost:5000/a"), "localhost:5000/a:latest");
        assert_eq!(normalize("ghcr.io/a/b@sha256:00"), "ghcr.io/a/b@sha256:00");
    }

    #[test]
    fn first_matching_rule_wins_against_either_form() {
        let map = ImageMap::from_rules(
            "map.yaml",
            vec![
                rule("docker.io/library/busybox:*", "/bin/sh", true),
                rule("ferry.test/*", "/a", false),
                rule("ferry.test/testapp:*", "/b", false),
            ],
        );
        assert_eq!(map.resolve("busybox").unwrap().exec, Path::new("/bin/sh"));
        assert_eq!(
            map.resolve("ferry.test/testapp:1").unwrap().exec,
            Path::new("/a")
        );
        assert!(map.resolve("nginx").is_none());
    }

    #[test]
    fn command_replaces_the_entrypoint_by_default() {
        let r = rule("x", "/bin/app", false);
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            r.launch(&s(&["/daprd", "--app-id", "a"]), &s(&["--x"])),
            Launch {
                program: "/bin/app".into(),
                args: s(&["--app-id", "a", "--x"])
            }
        );
        assert_eq!(
            r.launch(&[], &s(&["--port", "1"])),
            Launch {
                program: "/bin/app".into(),
                args: s(&["--port", "1"])
            }
        );
        let toolbox = rule("x", "/bin/sh", true);
        assert_eq!(
            toolbox.launch(&s(&["sleep"]), &s(&["5"])),
            Launch {
                program: "sleep".into(),
                args: s(&["5"])
            }
        );
        assert_eq!(toolbox.launch(&[], &[]).program, "/bin/sh");
    }

    #[test]
    fn parses_the_file_and_resolves_paths_against_root() {
        let text = "root: ..\nimages:\n  - match: \"a:*\"\n    exec: target/debug/a\n  - match: b\n    exec: /abs/b\n    honourCommand: true\n";
        let rules = parse(text, Path::new("/repo/e2e")).unwrap();
        assert_eq!(rules[0], rule("a:*", "/repo/target/debug/a", false));
        assert_eq!(rules[1], rule("b", "/abs/b", true));
        assert!(parse("images:\n  - match: a\n    exe: x\n", Path::new("/")).is_err());
    }

    #[test]
    fn overrides_need_pattern_and_executable() {
        let r = parse_override("ferry.test/x:*=target/debug/x", Path::new("/repo")).unwrap();
        assert_eq!(r, rule("ferry.test/x:*", "/repo/target/debug/x", false));
        assert!(parse_override("nonsense", Path::new("/")).is_err());
    }
}
