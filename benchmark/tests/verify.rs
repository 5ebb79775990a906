//! `tributary-bench verify` and `direct` against a real Kafka, through the real
//! binary. These tests fail, never skip, when Kafka is unreachable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use tributary_bridge::testing::{create_topic, require_kafka, unique_topic};

const BIN: &str = env!("CARGO_BIN_EXE_tributary-bench");

/// A scratch directory removed when the test ends, passed or not.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique_topic(&format!("tributary-bench-{name}")));
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A benchmark payload, built by hand as `payload.rs` lays it out (magic, run
/// id, connection, seq, padding), so a change of format shows up here.
fn stamped(run_id: u64, connection: u32, seq: u64) -> Vec<u8> {
    let mut out = b"TRB1".to_vec();
    out.extend_from_slice(&run_id.to_be_bytes());
    out.extend_from_slice(&connection.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.resize(64, b'.');
    out
}

/// Runs the binary, echoing its output so a failing assertion is explained.
fn bench(args: &[&str]) -> (Option<i32>, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .args(args)
        .output()
        .expect("running tributary-bench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    eprintln!("$ tributary-bench {}\n{text}", args.join(" "));
    (status.code(), text)
}

fn verify(bootstrap: &str, topic: &str, manifest: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let manifest = manifest.to_str().expect("UTF-8 temp path");
    let mut args = vec![
        "verify",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--manifest",
        manifest,
        "--timeout-secs",
        "60",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    bench(&args)
}

fn write_manifest(path: &Path, run_id: u64, unacked: [&[u64]; 2]) {
    let manifest = json!({
        "run_id": run_id,
        "qos": 1,
        "connections": {
            "0": { "sent": 100, "unacked": unacked[0] },
            "1": { "sent": 100, "unacked": unacked[1] },
        }
    });
    std::fs::write(path, serde_json::to_vec(&manifest).expect("manifest JSON"))
        .expect("writing the manifest");
}

#[tokio::test]
async fn verify_reports_deleted_or_never_sent_messages_as_missing() {
    let bootstrap = require_kafka();
    let topic = unique_topic("bench-verify");
    create_topic(&bootstrap, &topic, 2).await;
    let run_id = 0x5eed_0000_0000_0000 | u64::from(std::process::id());
    let skipped: [&[u64]; 2] = [&[10, 11, 57], &[99]];

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("creating a producer");
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for connection in 0..2u32 {
        for seq in (0..100).filter(|seq| !skipped[connection as usize].contains(seq)) {
            records.push((
                format!("conn-{connection}"),
                stamped(run_id, connection, seq),
            ));
        }
    }
    // One record twice (a retried publish), after later ones: a duplicate, not
    // an order violation. Then records verify must ignore: another run's, and
    // not a benchmark payload at all.
    records.push(("conn-1".into(), stamped(run_id, 1, 50)));
    records.push(("conn-0".into(), stamped(run_id + 1, 0, 10)));
    records.push(("other".into(), b"not a benchmark payload".to_vec()));
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, payload)| {
            let record = FutureRecord::to(&topic).key(key).payload(payload);
            producer.send(record, Duration::from_secs(30))
        })
        .collect();
    for delivery in futures::future::join_all(deliveries).await {
        delivery.expect("producing a test record");
    }

    let scratch = Scratch::new("verify");
    let all_acked = scratch.path("all-acked.json");
    write_manifest(&all_acked, run_id, [&[], &[]]);
    let (code, out) = verify(&bootstrap, &topic, &all_acked, &[]);
    assert_eq!(code, Some(1), "missing messages must fail verify");
    for line in [
        "expected: 200 ",
        "found: 196 ",
        "missing: 4 (connection/seq: 0/10, 0/11, 0/57, 1/99)",
        "duplicates: 1\n",
        "order violations: 0\n",
    ] {
        assert!(out.contains(line), "expected {line:?} in the report");
    }

    // The skipped ones were never acknowledged: nothing acknowledged is missing.
    let honest = scratch.path("honest.json");
    write_manifest(&honest, run_id, skipped);
    let (code, out) = verify(&bootstrap, &topic, &honest, &[]);
    assert_eq!(code, Some(0), "a duplicate alone must not fail verify");
    assert!(out.contains("expected: 196 "));
    assert!(out.contains("missing: 0\n"));
    assert!(out.contains("duplicates: 1\n"));

    let (code, _) = verify(&bootstrap, &topic, &honest, &["--strict"]);
    assert_eq!(code, Some(1), "--strict fails on the duplicate");
}

#[tokio::test]
async fn direct_run_is_fully_accounted_for_by_verify() {
    let bootstrap = require_kafka();
    let topic = unique_topic("bench-direct-test");
    create_topic(&bootstrap, &topic, 4).await;
    let scratch = Scratch::new("direct");
    let manifest = scratch.path("manifest.json");
    let result = scratch.path("result.json");

    let (code, _) = bench(&[
        "direct",
        "--bootstrap",
        &bootstrap,
        "--messages",
        "2000",
        "--connections",
        "4",
        "--topic",
        &topic,
        "--manifest-out",
        manifest.to_str().expect("UTF-8 temp path"),
        "--json-out",
        result.to_str().expect("UTF-8 temp path"),
        "--quiet",
    ]);
    assert_eq!(code, Some(0));
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result).expect("reading the result"))
            .expect("result JSON");
    assert_eq!(result["messages"], 2000);
    assert_eq!(result["failures"], 0);

    let (code, out) = verify(&bootstrap, &topic, &manifest, &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("expected: 2000 "));
    assert!(out.contains("found: 2000 "));
    assert!(out.contains("missing: 0\n"));
}
