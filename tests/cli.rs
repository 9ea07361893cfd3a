//! The `levee` binary: `check` on every shipped config and on broken ones.

use std::process::Command;

fn levee() -> Command {
    Command::new(env!("CARGO_BIN_EXE_levee"))
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("conf/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // Offline: the shipped examples name backends in networks that are not here,
        // and tests talk to loopback only (tests/dns.rs checks the lookups).
        let out = levee()
            .args(["check", "--offline", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed check:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok"));
        checked += 1;
    }
    assert!(checked >= 1, "no config in conf/");
}

#[test]
fn check_lists_every_error_with_its_key_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = ["127.0.0.1:8080"]

[[upstream]]
name = "a"
routes = ["/"]
[upstream.limits]
max_inflight = 0
[upstream.levels]
caution = { p95_ms = 200 }
danger = { p95_ms = 100 }
[[upstream.backend]]
address = "127.0.0.1:3000"
[[upstream.backend]]
address = "127.0.0.1:3000"
"#,
    )
    .unwrap();
    let out = levee().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "upstream[0].limits.max_inflight: must be at least 1",
        "upstream[0].backend[1].address: duplicate backend address",
        "upstream[0].levels.danger.p95_ms",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn check_of_a_missing_or_unparsable_file_is_a_clear_error() {
    let out = levee()
        .args(["check", "-c", "/nonexistent/levee.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/levee.toml"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syntax.toml");
    std::fs::write(&path, "[server\nlisten = 1\n").unwrap();
    let out = levee().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_refuses_an_invalid_config_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = [\"nope\"]\n").unwrap();
    let out = levee().args(["run", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen[0]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
