//! The binary as an operator runs it.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn tributary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
    // The operator's own overrides must not leak into what these tests check.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TRIBUTARY__") {
            command.env_remove(name);
        }
    }
    command
}

/// A config file of the test's own, removed when dropped.
struct TempConfig {
    dir: PathBuf,
    path: PathBuf,
}

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let dir = std::env::temp_dir().join(format!("tributary-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        TempConfig { dir, path }
    }

    fn check(&self) -> Output {
        tributary()
            .arg("--config")
            .arg(&self.path)
            .arg("--check-config")
            .output()
            .unwrap()
    }
}

/// A Tributary whose Kafka is down from the start: nothing listens on port 1 of
/// loopback.
const KAFKA_DOWN: &str = r##"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "127.0.0.1:1"
[[routes]]
name = "telemetry"
mqtt_filters = ["sensors/#"]
kafka_topic = "sensors"
"##;

/// Runs Tributary on `config` for `how_long` with its log going to a pipe, as
/// under a service manager; returns the log.
fn log_of_a_run(config: &TempConfig, how_long: Duration) -> String {
    let mut child = tributary()
        .arg("--config")
        .arg(&config.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read while it runs, so a chatty log cannot fill the pipe and stall it.
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    std::thread::sleep(how_long);
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap()
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `--check-config` on a file shipped in `conf/`; returns its stdout
/// after checking it passed without warnings.
fn check_shipped(file: &str) -> String {
    let path = format!("{}/../conf/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = tributary()
        .args(["--config", &path, "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no warnings");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let stdout = check_shipped("tributary.toml");
    assert!(
        stdout.starts_with("configuration is valid (1 route): checked "),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("conf/tributary.toml"),
        "{stdout}"
    );
}

#[test]
fn check_config_accepts_the_edge_example_with_the_spool_on() {
    let stdout = check_shipped("edge.toml");
    assert!(
        stdout.starts_with("configuration is valid (2 routes): checked "),
        "{stdout}"
    );
}

#[test]
fn check_config_says_when_only_the_defaults_were_checked_and_warns_of_no_routes() {
    let dir = std::env::temp_dir().join(format!("tributary-cli-{}-nofile", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // No --config and no conf/tributary.toml where it runs: built-in defaults.
    let out = tributary()
        .arg("--check-config")
        .current_dir(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configuration is valid (0 routes): checked built-in defaults (no configuration file)\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: no [[routes]] configured: nothing is forwarded to Kafka"),
        "{stderr}"
    );
}

#[test]
fn routes_can_come_from_the_environment_as_the_readme_writes_them() {
    let dir = std::env::temp_dir().join(format!("tributary-cli-{}-envroutes", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = tributary()
        .arg("--check-config")
        .current_dir(&dir)
        .env(
            "TRIBUTARY__ROUTES",
            r#"[{ name = "telemetry", mqtt_filters = ["sensors/#"], kafka_topic = "sensors" },
                { name = "alarms", mqtt_filters = ["alarms/+"], kafka_topic = "alarms", key = "client_id" }]"#,
        )
        .output()
        .unwrap();
    assert!(good.status.success(), "{good:?}");
    assert_eq!(
        String::from_utf8_lossy(&good.stdout),
        "configuration is valid (2 routes): checked built-in defaults (no configuration file) \
         with environment overrides TRIBUTARY__ROUTES\n"
    );
    // The form a newcomer tries first is refused with the form that works.
    let bad = tributary()
        .arg("--check-config")
        .current_dir(&dir)
        .env("TRIBUTARY__ROUTES__0__NAME", "telemetry")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("routes: must be an array of tables: [[routes]] in the file, or from the environment TRIBUTARY__ROUTES holding a TOML inline array"),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_every_problem_of_every_route_with_its_index() {
    // The first route's wrong key type used to hide the rest of that route, and
    // the second route's problems came out as routes[0].
    let config = TempConfig::new(
        "two-bad-routes",
        r##"
[[routes]]
name = "first route"
mqtt_filters = "a/#"
kafka_topic = "a"
key = "bogus"
colour = "red"

[[routes]]
name = "second"
mqtt_filters = ["b/#/c", "d/e+"]
kafka_topic = "b c"
"##,
    );
    let out = config.check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = [
        "routes[0].mqtt_filters: invalid type: string \"a/#\", expected a sequence",
        "routes[0].key: unknown value `bogus`, expected one of `topic`, `client_id`, `username`, `none`",
        "routes[0].colour: unknown field `colour`",
        "routes[0].name: ' ' is not allowed",
        "routes[1].mqtt_filters[0]: '#' must be the last level",
        "routes[1].mqtt_filters[1]: '+' must occupy a whole level",
        "routes[1].kafka_topic: ' ' is not allowed in a Kafka topic name",
    ];
    for line in expected {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    let first = stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "invalid configuration (7 problems): checked {}",
            config.path.display()
        )
    );
    assert_eq!(stderr.lines().count(), 1 + expected.len(), "{stderr}");
    assert!(!stderr.contains("KeySource"), "{stderr}");
}

#[test]
fn check_config_counts_one_problem_in_the_singular() {
    let config = TempConfig::new("one-problem", "[log]\nformat = \"xml\"\n");
    let out = config.check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("invalid configuration (1 problem): checked "),
        "{stderr}"
    );
    assert!(
        stderr.contains("log.format: unknown value `xml`, expected one of `human`, `json`"),
        "{stderr}"
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
    assert!(
        stderr.contains("with environment overrides TRIBUTARY__LOG__FORMAT"),
        "{stderr}"
    );
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

#[test]
fn the_log_has_no_colour_codes_when_it_is_not_a_terminal() {
    let config = TempConfig::new("no-colour", KAFKA_DOWN);
    let log = log_of_a_run(&config, Duration::from_secs(2));
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in a piped log:\n{log}");
}

#[test]
fn the_log_is_coloured_on_a_terminal() {
    let config = TempConfig::new("colour", KAFKA_DOWN);
    // `script` (util-linux) runs it on a pseudo-terminal and copies what it wrote.
    let command = format!(
        "timeout -s KILL 2 {} --config {}",
        env!("CARGO_BIN_EXE_tributary"),
        config.path.display()
    );
    let out = Command::new("script")
        .args(["-q", "-c", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) is installed");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains("\x1b["), "no colour on a terminal:\n{log}");
}

#[test]
fn check_config_names_security_problems_and_never_prints_a_secret() {
    const SECRET: &str = "short-secret-XYZZY";
    const HASH: &str = "$7$101$c2FsdHNhbHRzYWx0$notbase64!!";
    let config = TempConfig::new(
        "security",
        &format!(
            r##"
[[listeners]]
transport = "tls"
listen = "127.0.0.1:8883"
cert_file = "/nonexistent/server.pem"
key_file = "/nonexistent/server.key"
require_client_cert = true

[[listeners]]
transport = "tcp"
listen = "127.0.0.1:1883"
ws_path = "/mqtt2"

[auth]
password_file = "PASSWORDS"

[auth.jwt]
algorithm = "HS256"
secret = "{SECRET}"
"##
        ),
    );
    let passwords = config.dir.join("passwords");
    std::fs::write(&passwords, format!("alice:{HASH}\n")).unwrap();
    let text = std::fs::read_to_string(&config.path)
        .unwrap()
        .replace("PASSWORDS", passwords.to_str().unwrap());
    std::fs::write(&config.path, text).unwrap();

    let output = config.check();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "listeners[0].require_client_cert: needs client_ca_file",
        "listeners[0]: cannot read /nonexistent/server.pem",
        "listeners[1].ws_path: only for transport `ws` or `wss`",
        "auth.password_file:",
        "auth.jwt.secret",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains(SECRET),
        "the JWT secret was printed:\n{stderr}"
    );
    assert!(
        !stderr.contains("notbase64"),
        "the password hash was printed:\n{stderr}"
    );
}

#[test]
fn sighup_reloads_certificates_the_password_file_and_the_acl() {
    let config = TempConfig::new("sighup", "");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = config.dir.join("server.pem");
    let key_path = config.dir.join("server.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let passwords = config.dir.join("passwd");
    let acl = config.dir.join("acl");
    std::fs::write(&passwords, "").unwrap();
    std::fs::write(&acl, "topic read public/#\n").unwrap();
    std::fs::write(
        &config.path,
        format!(
            r##"
[http]
listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "127.0.0.1:1"
[[listeners]]
name = "devices"
transport = "tls"
listen = "127.0.0.1:0"
cert_file = "{}"
key_file = "{}"
[auth]
password_file = "{}"
acl_file = "{}"
"##,
            cert_path.display(),
            key_path.display(),
            passwords.display(),
            acl.display()
        ),
    )
    .unwrap();
    let tributary = common::Process::start(&config.path);
    // SIGHUP only once it listens: before its handler is installed the
    // signal would end the process.
    tributary.wait_for(Duration::from_secs(30), |line| {
        line.contains("listener=\"devices\"")
    });
    tributary.signal("HUP");
    let log = tributary.wait_for(Duration::from_secs(10), |line| {
        line.contains("SIGHUP: reloading")
    });
    assert!(log.iter().any(|l| l.contains("SIGHUP: reloading")));
    // The certificate, the password file and the ACL, in some order.
    let mut reloaded = Vec::new();
    while reloaded.len() < 3 {
        let lines = tributary.wait_for(Duration::from_secs(10), |line| line.contains("reloaded"));
        reloaded.extend(lines.into_iter().filter(|l| l.contains("reloaded")));
    }
    assert!(
        reloaded
            .iter()
            .any(|l| l.contains("TLS certificate reloaded")),
        "{reloaded:?}"
    );
    assert_eq!(reloaded.len(), 3, "{reloaded:?}");
}

#[test]
fn check_config_accepts_the_compose_config() {
    let stdout = check_shipped("docker.toml");
    assert!(
        stdout.starts_with("configuration is valid (1 route): checked "),
        "{stdout}"
    );
}

/// `tributary healthcheck` as a container engine runs it.
fn healthcheck(args: &[&str]) -> Output {
    tributary().arg("healthcheck").args(args).output().unwrap()
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[test]
fn healthcheck_passes_once_the_server_it_finds_in_the_config_is_ready() {
    let bootstrap = tributary_bridge::testing::require_kafka();
    // A fixed HTTP port, so that the health check finds it in the file, as
    // in the container.
    let port = free_port();
    let config = TempConfig::new(
        "healthy",
        &format!(
            r##"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:{port}"
[kafka]
bootstrap_servers = "{bootstrap}"
metadata_probe_interval_ms = 500
"##
        ),
    );
    let server = common::Process::start(&config.path);
    server.wait_for(Duration::from_secs(30), |line| {
        line.contains("listener=\"http\"")
    });
    let path = config.path.to_str().unwrap();
    // Ready once Kafka answered its first metadata request.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = healthcheck(&["--config", path]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn healthcheck_fails_in_one_line_when_nothing_listens() {
    let url = format!("http://127.0.0.1:{}/readyz", free_port());
    let out = healthcheck(&["--url", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("not healthy: {url}: cannot connect: ")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn healthcheck_fails_with_the_servers_reason_while_kafka_is_unreachable() {
    let config = TempConfig::new("unhealthy", KAFKA_DOWN);
    let server = common::Process::start(&config.path);
    let (_, http) = server.addrs();
    let out = healthcheck(&["--url", &format!("http://{http}/readyz")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "not healthy: http://{http}/readyz: 503 not ready: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Kafka"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn healthcheck_refuses_what_it_cannot_ask() {
    let out = healthcheck(&["--url", "https://127.0.0.1:9464/readyz"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("only http"), "{stderr}");
    let config = TempConfig::new("bad-for-healthcheck", "[http]\nlisten = \"nowhere\"\n");
    let out = healthcheck(&["--config", config.path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--check-config"), "{stderr}");
}

/// SIGTERM while it is still starting (here: right after it warned that no
/// routes are configured, before its listeners are bound): the signal is
/// already Tributary's, and ends the start at once with exit 0. Left to its
/// default action it would kill the process; as PID 1 in a container it
/// would be ignored until the grace period ran out.
#[test]
fn sigterm_while_starting_ends_the_start_cleanly() {
    let config = TempConfig::new(
        "sigterm-starting",
        r#"
shutdown_timeout_ms = 1000
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "127.0.0.1:1"
"#,
    );
    for _ in 0..3 {
        let mut tributary = common::Process::start(&config.path);
        tributary.wait_for(Duration::from_secs(30), |line| {
            line.contains("no [[routes]] configured")
        });
        tributary.signal("TERM");
        let exit = tributary
            .wait_exit(Duration::from_secs(15))
            .expect("it stops within the shutdown timeout");
        assert!(
            exit.success(),
            "a clean exit, not killed by the signal: {exit:?}"
        );
    }
}
