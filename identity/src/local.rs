//! The standalone local CA: a root and issuer kept under `$FERRY_HOME/ca`, created on first use,
//! so `ferry run --enable-mtls` runs the same mTLS path as a cluster with no cluster at all.
//! Every sidecar on the machine signs its own CSR with it in-process; the key it certifies
//! still never leaves that sidecar.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use crate::ca::{Authority, CaError, CaMaterial, DEFAULT_CA_TTL};

/// The files of a CA directory, with Dapr's names.
pub const ROOT: &str = "ca.crt";
pub const ISSUER_CERT: &str = "issuer.crt";
pub const ISSUER_KEY: &str = "issuer.key";

/// The local CA in `dir`, generated for `trust_domain` when the directory does not exist yet.
/// Sidecars starting at once race safely: each builds a candidate beside it and renames it
/// into place; the losers read the winner's.
pub fn open_or_create(
    dir: &Path,
    trust_domain: &str,
    workload_ttl: Duration,
) -> Result<Authority, LocalCaError> {
    if !dir.join(ISSUER_KEY).exists() {
        create(dir, trust_domain)?;
    }
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|source| LocalCaError::Io { path, source })
    };
    let (root, cert, key) = (read(ROOT)?, read(ISSUER_CERT)?, read(ISSUER_KEY)?);
    Authority::new(&cert, &key, &root, workload_ttl).map_err(|source| LocalCaError::Load {
        dir: dir.to_owned(),
        source,
    })
}

fn create(dir: &Path, trust_domain: &str) -> Result<(), LocalCaError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LocalCaError::Io { path, source }
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(io(parent))?;
    let material = CaMaterial::generate(trust_domain, DEFAULT_CA_TTL).map_err(|source| {
        LocalCaError::Load {
            dir: dir.to_owned(),
            source,
        }
    })?;
    let candidate = parent.join(format!(
        ".{}.{}.{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("ca"),
        std::process::id(),
        fastrand_suffix()
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&candidate)
        .map_err(io(&candidate))?;
    for (name, text, mode) in [
        (ROOT, &material.root_cert, 0o644),
        (ISSUER_CERT, &material.issuer_cert, 0o644),
        (ISSUER_KEY, &material.issuer_key, 0o600),
    ] {
        let path = candidate.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(text.as_bytes()).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    // The root's key is not kept: the local CA never signs another issuer, and a new one is a
    // new directory (remove it to start over).
    match fs::rename(&candidate, dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "created the local CA");
            Ok(())
        }
        Err(_) if dir.join(ISSUER_KEY).exists() => {
            let _ = fs::remove_dir_all(&candidate);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&candidate);
            Err(LocalCaError::Io {
                path: dir.to_owned(),
                source: e,
            })
        }
    }
}

fn fastrand_suffix() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b);
    u64::from_le_bytes(b)
}

#[derive(Debug, Error)]
pub enum LocalCaError {
    #[error("the local CA at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the local CA at {dir} is unusable (remove the directory to make a new one): {source}")]
    Load { dir: PathBuf, source: CaError },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_sidecars_share_one_ca() {
        let tmp = std::env::temp_dir().join(format!("ferry-local-ca-{}", fastrand_suffix()));
        let dir = tmp.join("ca");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    open_or_create(&dir, "public", Duration::from_secs(60))
                        .unwrap()
                        .trust_anchors_pem()
                        .to_owned()
                })
            })
            .collect();
        let roots: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(roots.windows(2).all(|w| w[0] == w[1]));
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
        };
        assert_eq!(mode(&dir.join(ISSUER_KEY)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            1,
            "no candidate left behind"
        );
        fs::remove_dir_all(&tmp).unwrap();
    }
}
