//! The four binaries as a user meets them: --help, --version, config files with flag overrides, log filtering.

use spacedock_cluster_tests::{BINARIES, run};

#[test]
fn every_binary_has_help_and_version() {
    for name in BINARIES {
        let help = run(name, &["--help"], &[]);
        assert_eq!(help.code, Some(0), "{name} --help: {help:?}");
        assert!(help.stdout.contains("Usage:"), "{name}: {}", help.stdout);
        let version = run(name, &["--version"], &[]);
        assert_eq!(version.code, Some(0));
        assert_eq!(
            version.stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn daemons_print_their_documented_example_configs() {
    for (name, file) in [
        ("spacedock-coordinator", "ops/config/coordinator.toml"),
        ("spacedock-agent", "ops/config/agent.toml"),
        ("spacedock-builder", "ops/config/builder.toml"),
    ] {
        let r = run(name, &["--config", file, "--print-config"], &[]);
        assert_eq!(r.code, Some(0), "{name}: {r:?}");
        assert!(r.stdout.contains("data_dir = "), "{name}: {}", r.stdout);
    }
}

#[test]
fn flags_override_the_config_file() {
    let r = run(
        "spacedock-coordinator",
        &[
            "--config",
            "ops/config/coordinator.toml",
            "--node-id",
            "7",
            "--apps-domain",
            "apps.example.org",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("node_id = 7"), "{}", r.stdout);
    assert!(
        r.stdout.contains("apps_domain = \"apps.example.org\""),
        "{}",
        r.stdout
    );
    let r = run(
        "spacedock-agent",
        &["--join", "10.1.1.1:7443,10.1.1.2:7443", "--print-config"],
        &[],
    );
    assert!(
        r.stdout.contains("\"10.1.1.1:7443\"") && r.stdout.contains("\"10.1.1.2:7443\""),
        "{}",
        r.stdout
    );
}

#[test]
fn bad_config_files_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coord.toml");
    std::fs::write(&path, "node_id = 1\napi_listn = \"0.0.0.0:1\"\n").unwrap();
    let r = run(
        "spacedock-coordinator",
        &["--config", path.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("coord.toml")
            && r.stderr.contains("line 2")
            && r.stderr.contains("api_listn"),
        "{}",
        r.stderr
    );

    std::fs::write(&path, "[[flavors.flavor]]\nname = \"gpu\"\nvcpu = 0\nmemory_gib = 1\ndisk_gib = 1\nprice_per_hour = \"1\"\n").unwrap();
    let r = run(
        "spacedock-coordinator",
        &["--config", path.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("flavor `gpu`: vcpu: must be at least 1"),
        "{}",
        r.stderr
    );

    let r = run(
        "spacedock-builder",
        &["--config", "/nonexistent/builder.toml"],
        &[],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("cannot read config file /nonexistent/builder.toml"),
        "{}",
        r.stderr
    );
}

#[test]
fn rust_log_filters_what_daemons_log() {
    let r = run("spacedock-agent", &[], &[("RUST_LOG", "info")]);
    assert!(r.stderr.contains("config loaded"), "{}", r.stderr);
    let r = run("spacedock-agent", &[], &[("RUST_LOG", "error")]);
    assert!(!r.stderr.contains("config loaded"), "{}", r.stderr);
    let r = run("spacedock-agent", &["--log", "nonsense=[[["], &[]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("invalid log filter"), "{}", r.stderr);
}
