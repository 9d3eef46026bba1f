//! `spacedock space ...`: commands about one Space; today, validating its README.md config (and a Docker
//! Space's Dockerfile).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use spacedock_shared::flavor::Catalog;
use spacedock_shared::space_config::{self, MAX_README_BYTES};

/// Exit status when the README could be read but is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit status when the README could not be read at all.
pub const EXIT_UNREADABLE: u8 = 2;

/// `spacedock space validate PATH`: prints each problem as `PATH:LINE: KEY: message`.
pub fn validate(path: &Path, catalog: &Catalog) -> ExitCode {
    let readme = readme_path(path);
    let shown = readme.display().to_string();
    let bytes = match read_bounded(&readme) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("spacedock: {e:#}");
            return ExitCode::from(EXIT_UNREADABLE);
        }
    };
    let report = space_config::validate_readme(&bytes, catalog);
    for problem in &report.problems {
        println!("{}", problem.render(&shown));
    }
    let mut n_errors = report.errors().count();
    let n_warnings = report.warnings().count();
    // A Docker Space in a folder: its Dockerfile is checked too, every problem with its line.
    if let Some(config) = &report.config
        && config.sdk.as_str() == "docker"
        && path.is_dir()
    {
        let dockerfile = path.join("Dockerfile");
        let shown = dockerfile.display().to_string();
        match read_bounded(&dockerfile) {
            Err(_) => {
                println!("{shown}: missing; a docker Space is built from it");
                n_errors += 1;
            }
            Ok(bytes) => {
                if let Err(problems) =
                    spacedock_shared::dockerfile::parse(&String::from_utf8_lossy(&bytes))
                {
                    for p in &problems {
                        println!("{shown}:{}: {}", p.line, p.message);
                    }
                    n_errors += problems.len();
                }
            }
        }
    }
    match &report.config {
        Some(_) if n_errors > 0 => {
            eprintln!("{shown}: invalid ({n_errors} error(s), {n_warnings} warning(s))");
            ExitCode::from(EXIT_INVALID)
        }
        Some(config) => {
            eprintln!(
                "{shown}: valid {} Space ({n_warnings} warning(s))",
                config.sdk
            );
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("{shown}: invalid ({n_errors} error(s), {n_warnings} warning(s))");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// PATH itself, or PATH/README.md when PATH is a directory.
fn readme_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("README.md")
    } else {
        path.to_path_buf()
    }
}

/// Reads at most one byte past the limit, so a huge file is refused without reading all of it.
fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_README_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}
