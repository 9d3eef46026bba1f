//! Data-driven tests of the Space config validator: every README under fixtures/space-config against its .expect file.
//!
//! An `.expect` file lists every problem the README must produce, one per line: `SEVERITY LINE KEY | message part`.
//! The problems reported must be exactly those (same severity, line and key), each message containing its part.

#![allow(clippy::unwrap_used)] // test helpers: panics are how tests fail

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spacedock_shared::flavor::Catalog;
use spacedock_shared::space_config::{MAX_README_BYTES, Severity, validate_readme};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/space-config")
        .join(kind);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    paths.sort();
    paths
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    severity: String,
    line: usize,
    key: String,
    message_part: String,
}

fn expectations(readme: &Path) -> Vec<Expected> {
    let path = readme.with_extension("expect");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut expected: Vec<Expected> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (head, message_part) = l
                .split_once(" | ")
                .unwrap_or_else(|| panic!("{}: bad line {l}", path.display()));
            let mut parts = head.splitn(3, ' ');
            Expected {
                severity: parts.next().unwrap().to_owned(),
                line: parts.next().unwrap().parse().unwrap(),
                key: parts.next().unwrap().to_owned(),
                message_part: message_part.to_owned(),
            }
        })
        .collect();
    expected.sort();
    expected
}

fn check(readme: &Path, want_valid: bool) -> Result<(), String> {
    let bytes = std::fs::read(readme).unwrap();
    let started = Instant::now();
    let report = validate_readme(&bytes, &Catalog::huggingface());
    let elapsed = started.elapsed();
    let name = readme.file_name().unwrap().to_string_lossy();
    if elapsed > Duration::from_secs(1) {
        return Err(format!("{name}: took {elapsed:?}"));
    }
    if report.is_valid() != want_valid {
        return Err(format!(
            "{name}: valid = {}, want {want_valid}: {:?}",
            report.is_valid(),
            report.problems
        ));
    }
    let mut got: Vec<Expected> = report
        .problems
        .iter()
        .map(|p| Expected {
            severity: match p.severity {
                Severity::Error => "error".into(),
                Severity::Warning => "warning".into(),
            },
            line: p.line,
            key: p.key.clone(),
            message_part: p.message.clone(),
        })
        .collect();
    got.sort();
    let want = expectations(readme);
    let same_places = got.len() == want.len()
        && got.iter().zip(&want).all(|(g, w)| {
            (&g.severity, g.line, &g.key) == (&w.severity, w.line, &w.key)
                && g.message_part.contains(&w.message_part)
        });
    if !same_places {
        return Err(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
    }
    Ok(())
}

#[test]
fn invalid_readmes_report_every_problem_where_it_is() {
    let paths = fixtures("invalid");
    assert!(paths.len() >= 30, "only {} invalid fixtures", paths.len());
    let failures: Vec<String> = paths.iter().filter_map(|p| check(p, false).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_readmes_pass_with_their_warnings() {
    let paths = fixtures("valid");
    assert!(!paths.is_empty());
    let failures: Vec<String> = paths.iter().filter_map(|p| check(p, true).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn example_spaces_are_valid_without_warnings() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples");
    let mut sdks = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let readme = entry.unwrap().path().join("README.md");
        let report = validate_readme(&std::fs::read(&readme).unwrap(), &Catalog::huggingface());
        assert!(
            report.problems.is_empty(),
            "{}: {:?}",
            readme.display(),
            report.problems
        );
        sdks.push(report.config.unwrap().sdk.as_str());
    }
    sdks.sort();
    assert_eq!(sdks, ["docker", "gradio", "static", "streamlit"]);
}

#[test]
fn oversized_readme_is_refused_before_parsing() {
    let mut text = String::from("---\nsdk: gradio\n---\n");
    text.push_str(&"x".repeat(MAX_README_BYTES));
    let started = Instant::now();
    let report = validate_readme(text.as_bytes(), &Catalog::huggingface());
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(report.problems.len(), 1);
    assert_eq!(
        (report.problems[0].line, report.problems[0].key.as_str()),
        (1, "<file>")
    );
    assert!(
        report.problems[0]
            .message
            .contains("the limit is 1048576 bytes"),
        "{:?}",
        report.problems
    );
}

#[test]
fn huge_front_matter_within_the_size_limit_stays_fast() {
    let mut text = String::from("---\nsdk: gradio\ntags:\n");
    while text.len() < MAX_README_BYTES - 100 {
        text.push_str("  - t\n");
    }
    text.push_str("---\n");
    let started = Instant::now();
    let report = validate_readme(text.as_bytes(), &Catalog::huggingface());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        report.problems[0].message.contains("more than 20000 nodes"),
        "{:?}",
        report.problems
    );
}
