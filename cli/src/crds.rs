//! `ferry crds`: writes the CustomResourceDefinitions (`ferry_api::crd::all()`) as YAML files,
//! one per CRD. `make crds` runs it to refresh `crds/`.

use std::{fs, io, path::PathBuf};

use clap::Args;
use ferry_api::crd;

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// The directory to write `<plural>.<group>.yaml` files to. Generated files that are no
    /// longer produced (they start with the generated-file header) are removed.
    #[arg(long, env = "FERRY_CRDS_OUT_DIR", default_value = "crds")]
    pub out_dir: PathBuf,
}

pub fn main(args: CrdsArgs) -> i32 {
    match write(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ferry crds: {e}");
            1
        }
    }
}

fn write(args: &CrdsArgs) -> Result<(), String> {
    let dir = &args.out_dir;
    let files = crd::rendered().map_err(|e| format!("cannot render the CRDs as YAML: {e}"))?;
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (name, text) in &files {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    for path in stale(dir, &files).map_err(|e| format!("cannot read {}: {e}", dir.display()))? {
        fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        println!("removed {} (no longer generated)", path.display());
    }
    Ok(())
}

/// Files in `dir` that we generated earlier but no longer produce.
fn stale(dir: &std::path::Path, files: &[(String, String)]) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !path.is_file() || files.iter().any(|(f, _)| f == name) {
            continue;
        }
        if fs::read_to_string(&path).is_ok_and(|t| t.starts_with(crd::HEADER)) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
