//! `spacedock space validate` as scripts use it: output lines `PATH:LINE: KEY: message`, exit 0, 1 or 2.

use spacedock_cluster_tests::run;

const INVALID: &str = "shared/tests/fixtures/space-config/invalid";

#[test]
fn example_spaces_are_valid() {
    for example in [
        "static-hello",
        "gradio-echo",
        "streamlit-counter",
        "docker-hello",
    ] {
        let path = format!("ops/examples/{example}");
        let r = run("spacedock", &["space", "validate", &path], &[]);
        assert_eq!(r.code, Some(0), "{example}: {r:?}");
        assert_eq!(r.stdout, "", "{example} printed problems");
        assert!(
            r.stderr.contains(&format!("{path}/README.md: valid")),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn invalid_readme_prints_each_problem_and_exits_1() {
    let path = format!("{INVALID}/several-problems.md");
    let r = run("spacedock", &["space", "validate", &path], &[]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", r.stdout);
    assert!(
        lines[0].starts_with(&format!("{path}:4: colorFrom: ")),
        "{}",
        lines[0]
    );
    assert!(
        lines[4].starts_with(&format!("{path}:8: pinned: ")),
        "{}",
        lines[4]
    );
    assert!(
        r.stderr.contains("invalid (5 error(s), 0 warning(s))"),
        "{}",
        r.stderr
    );
}

#[test]
fn hostile_inputs_fail_cleanly() {
    for (file, want) in [
        ("alias-bomb.md", ":7: <yaml>: aliases expand more than"),
        ("deep-nesting.md", ":3: <yaml>: nesting deeper than 32"),
        ("non-utf8.md", ":3: <file>: README.md is not valid UTF-8"),
        ("unclosed-front-matter.md", ":1: <front-matter>: "),
    ] {
        let r = run(
            "spacedock",
            &["space", "validate", &format!("{INVALID}/{file}")],
            &[],
        );
        assert_eq!(r.code, Some(1), "{file}: {r:?}");
        assert!(r.stdout.contains(want), "{file}: {}", r.stdout);
    }
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("README.md");
    std::fs::write(&big, vec![b'x'; 3 << 20]).unwrap();
    let r = run(
        "spacedock",
        &["space", "validate", dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout
            .contains("README.md:1: <file>: README.md is 1048577 bytes"),
        "{}",
        r.stdout
    );
}

#[test]
fn warnings_are_printed_but_pass() {
    let path = "shared/tests/fixtures/space-config/valid/unknown-keys-warn.md";
    let r = run("spacedock", &["space", "validate", path], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "{path}:3: colourFrom: warning: unknown key (kept as is); did you mean `colorFrom`?"
        )),
        "{}",
        r.stdout
    );
}

#[test]
fn unreadable_path_exits_2() {
    let r = run(
        "spacedock",
        &["space", "validate", "/nonexistent/space"],
        &[],
    );
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("cannot open /nonexistent/space"),
        "{}",
        r.stderr
    );
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        "spacedock",
        &["space", "validate", dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("README.md"), "{}", r.stderr);
}

#[test]
fn a_docker_spaces_dockerfile_is_checked_with_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("README.md"),
        "---\nsdk: docker\napp_port: 7860\n---\n",
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let r = run("spacedock", &["space", "validate", path], &[]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout.contains(&format!("{path}/Dockerfile: missing")),
        "{}",
        r.stdout
    );

    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM python:3.11\nHEALTHCHECK CMD true\nCOPY app.py\nRUN --mount=type=cache,target=/x pip install x\n",
    )
    .unwrap();
    let r = run("spacedock", &["space", "validate", path], &[]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(
        lines[0].starts_with(&format!(
            "{path}/Dockerfile:2: HEALTHCHECK is not supported"
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("{path}/Dockerfile:3: COPY needs")),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(&format!("{path}/Dockerfile:4: RUN --mount=type=cache")),
        "{}",
        lines[2]
    );
    assert!(r.stderr.contains("invalid (3 error(s)"), "{}", r.stderr);
}
