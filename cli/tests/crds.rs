//! `crds/` must be exactly what `ferry crds` writes from `ferry_api::crd::all()`, and the Helm
//! chart's CRD templates (`charts/ferry/templates/crds/`) exactly what it makes of them.
//! `UPDATE_CRDS=1 cargo test` rewrites both (through the real `ferry crds`, as `make crds` does).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

fn repo_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn repo_chart_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry/templates/crds")
}

fn ferry_crds(out_dir: &Path, chart_crds_dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["crds", "--out-dir"])
        .arg(out_dir)
        .arg("--chart-crds-dir")
        .arg(chart_crds_dir)
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
        ferry_crds(&dir, &repo_chart_crds());
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

/// The chart's CRD templates are generated from `crds/` (run after `crds_are_up_to_date` would
/// have rewritten them, so `UPDATE_CRDS=1` leaves both consistent).
#[test]
fn chart_crd_templates_are_up_to_date() {
    let tmp = temp_dir("chart");
    ferry_crds(&tmp.join("crds"), &tmp.join("chart"));
    let want = files_in(&tmp.join("chart"));
    assert_eq!(
        want.len(),
        ferry_api::crd::all().len(),
        "one template per CRD"
    );
    let have = files_in(&repo_chart_crds());
    for (name, text) in &want {
        match have.iter().find(|(n, _)| n == name) {
            None => panic!(
                "chart CRDs are stale: run `make crds` (charts/ferry/templates/crds/{name} is missing)"
            ),
            Some((_, t)) if t != text => {
                panic!(
                    "chart CRDs are stale: run `make crds` (charts/ferry/templates/crds/{name} differs)"
                )
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
        "chart CRDs are stale: run `make crds` (charts/ferry/templates/crds/ has files no CRD produces: {extra:?})"
    );
    // Each template is its crds/ file with the chart's metadata added, nothing else changed.
    for (name, template) in &want {
        let source = fs::read_to_string(tmp.join("crds").join(name)).unwrap();
        let body = source.strip_prefix(ferry_api::crd::HEADER).unwrap();
        let kept: String = template
            .lines()
            .filter(|l| !l.contains("{{") && !is_added_metadata(l))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            kept, body,
            "{name}: the template changes more than the metadata"
        );
    }
    fs::remove_dir_all(&tmp).unwrap();
}

/// The lines `ferry crds` adds to a CRD's metadata in the chart (besides template actions).
fn is_added_metadata(line: &str) -> bool {
    [
        "  labels:",
        "    app.kubernetes.io/component: crds",
        "  annotations:",
        "    helm.sh/resource-policy: keep",
    ]
    .contains(&line)
        || line.starts_with("    # `helm uninstall` keeps the CRD")
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-crds-test-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn ferry_crds_writes_each_crd_and_removes_stale_generated_files() {
    let root = temp_dir("stale");
    let (dir, chart) = (root.join("crds"), root.join("chart"));
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&chart).unwrap();
    let renamed = dir.join("oldkinds.ferry.dev.yaml");
    fs::write(&renamed, format!("{}kind: Old\n", ferry_api::crd::HEADER)).unwrap();
    let own = dir.join("notes.yaml");
    fs::write(&own, "a file someone else wrote\n").unwrap();
    let old_template = chart.join("oldkinds.ferry.dev.yaml");
    fs::write(
        &old_template,
        format!(
            "{}oldkinds.ferry.dev.yaml; do not edit. */ -}}}}\n",
            ferry_cli_chart_header()
        ),
    )
    .unwrap();
    let helper = chart.join("_helpers.tpl");
    fs::write(&helper, "{{/* someone else's */}}\n").unwrap();

    ferry_crds(&dir, &chart);

    let mut want = ferry_api::crd::rendered().unwrap();
    want.push(("notes.yaml".into(), "a file someone else wrote\n".into()));
    want.sort();
    assert_eq!(files_in(&dir), want);
    let names: Vec<String> = files_in(&chart).into_iter().map(|(n, _)| n).collect();
    let mut want_names: Vec<String> = ferry_api::crd::rendered()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .chain(["_helpers.tpl".to_owned()])
        .collect();
    want_names.sort();
    assert_eq!(
        names, want_names,
        "the stale template is gone, the helper stays"
    );
    fs::remove_dir_all(&root).unwrap();
}

/// The start of every generated chart template (cli/src/crds.rs `CHART_HEADER`; a binary crate
/// exports nothing, so the test repeats it).
fn ferry_cli_chart_header() -> &'static str {
    "{{- /* Generated by `ferry crds` (make crds) from crds/"
}
