//! `crds/` must be exactly what `ferry crds` writes from `ferry_api::crd::all()`.
//! `UPDATE_CRDS=1 cargo test` rewrites it (through the real `ferry crds`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

fn repo_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn ferry_crds(out_dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["crds", "--out-dir"])
        .arg(out_dir)
        .output()
        .expect("runs ferry");
    assert!(
        out.status.success(),
        "ferry crds failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The files in `dir`, sorted, with their text.
fn files_in(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).unwrap_or_default())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn crds_are_up_to_date() {
    let dir = repo_crds();
    if std::env::var_os("UPDATE_CRDS").is_some() {
        ferry_crds(&dir);
    }
    let mut want = ferry_api::crd::rendered().expect("the CRDs render");
    want.sort();
    let have = files_in(&dir);
    for (name, text) in &want {
        match have.iter().find(|(n, _)| n == name) {
            None => panic!("CRDs are stale: run `make crds` (crds/{name} is missing)"),
            Some((_, t)) if t != text => {
                panic!("CRDs are stale: run `make crds` (crds/{name} differs)")
            }
            Some(_) => {}
        }
    }
    let extra: Vec<&str> = have
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !want.iter().any(|(w, _)| w == n))
        .collect();
    assert!(
        extra.is_empty(),
        "CRDs are stale: run `make crds` (crds/ has files no CRD produces: {extra:?})"
    );
}

#[test]
fn ferry_crds_writes_each_crd_and_removes_stale_generated_files() {
    let dir = std::env::temp_dir().join(format!("ferry-crds-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let renamed = dir.join("oldkinds.ferry.dev.yaml");
    fs::write(&renamed, format!("{}kind: Old\n", ferry_api::crd::HEADER)).unwrap();
    let own = dir.join("notes.yaml");
    fs::write(&own, "a file someone else wrote\n").unwrap();

    ferry_crds(&dir);

    let mut want = ferry_api::crd::rendered().unwrap();
    want.push(("notes.yaml".into(), "a file someone else wrote\n".into()));
    want.sort();
    assert_eq!(files_in(&dir), want);
    fs::remove_dir_all(&dir).unwrap();
}
