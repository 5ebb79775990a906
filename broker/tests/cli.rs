//! The binary as an operator runs it.

use std::process::Command;

fn tributary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let out = tributary()
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/tributary.toml"),
        ])
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configuration is valid\n"
    );
}

#[test]
fn check_config_names_every_mistake_at_once() {
    let dir = std::env::temp_dir().join(format!("tributary-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r##"
[mqtt]
listen = "0.0.0.0:99999"

[kafka]
bootstrap_servers = "127.0.0.1:9092"
deliverytimeout_ms = 5

[[routes]]
name = "telemetry"
mqtt_filters = ["sensors/#"]
kafka_topic = "sensors"

[[routes]]
name = "telemetry"
mqtt_filters = ["x/#/y"]
kafka_topic = "x"
"##,
    )
    .unwrap();
    let out = tributary()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        // An override from the environment is validated like the file.
        .env("TRIBUTARY__LOG__FORMAT", "xml")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "mqtt.listen: '0.0.0.0:99999' is not an address",
        "kafka.deliverytimeout_ms: unknown field",
        "routes[1].name: 'telemetry' is already the name of routes[0]",
        "routes[1].mqtt_filters[0]: '#' must be the last level",
        "log.format: ",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("(5 problems)"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = tributary()
        .args(["--config", "/nonexistent/tributary.toml", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/tributary.toml"), "{stderr}");
}
