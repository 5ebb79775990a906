//! Inputs the link fuzz target (`fuzz_link.rs`) found to crash a connection or
//! the router, each sent as a device would, over TCP. What a device sends may
//! cost it its own connection, never the server: afterwards a new device still
//! connects and gets its SUBSCRIBE answered (which needs the router), and no
//! connection task panicked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{metric, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary::Server;
use tributary_wire::packet;

const WAIT: Duration = Duration::from_secs(5);

/// Tributary with no Kafka routes: these are about the broker side.
async fn server() -> Server {
    let bootstrap = tributary_bridge::testing::bootstrap();
    common::start(&bootstrap, &[], |_| {}).await
}

/// A string field: two length bytes, then the bytes.
fn string(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u16).to_be_bytes()[..], bytes].concat()
}

/// An MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s.
fn connect(client_id: &str) -> Vec<u8> {
    let body = [
        &string(b"MQTT")[..],
        &[4, 0x02, 0, 60],
        &string(client_id.as_bytes()),
    ]
    .concat();
    packet(0x10, &body)
}

/// An MQTT 3.1.1 SUBSCRIBE of `filters` at QoS 0.
fn subscribe(pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(string(filter.as_bytes()));
        body.push(0);
    }
    packet(0x82, &body)
}

/// An MQTT 3.1.1 PUBLISH: `flags` is the first byte's low nibble.
fn publish(flags: u8, topic: &str, pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic.as_bytes());
    body.extend(pkid.map(u16::to_be_bytes).unwrap_or_default());
    body.extend_from_slice(payload);
    packet(0x30 | flags, &body)
}

/// Reads until `expected` has arrived (true) or the connection closed or
/// stalled (false).
async fn receives(raw: &mut Raw, expected: &[u8]) -> bool {
    raw.read_until(expected, WAIT).await.is_some()
}

/// A new device connects, subscribes and is answered; no connection task has
/// panicked.
async fn still_serves(server: &Server, probe: &str) {
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&connect(probe)).await;
    assert!(
        receives(&mut raw, &[0x20, 2, 0, 0]).await,
        "{probe}: no CONNACK 0x00 (the router is gone?)"
    );
    raw.send(&subscribe(1, &["probe"])).await;
    assert!(
        receives(&mut raw, &[0x90, 3, 0, 1, 0]).await,
        "{probe}: no SUBACK (the router is gone?)"
    );
    let panicked = metric(
        server,
        r#"tributary_connections_closed_total{reason="internal_error"}"#,
    )
    .await;
    assert_eq!(panicked, 0.0, "{probe}: a connection task panicked");
}

/// A connected device that subscribed to `filters` (SUBACK received).
async fn subscriber(addr: SocketAddr, id: &str, filters: &[&str]) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect(id)).await;
    assert!(receives(&mut raw, &[0x20, 2, 0, 0]).await, "{id}: CONNACK");
    raw.send(&subscribe(1, filters)).await;
    assert!(receives(&mut raw, &[0x90]).await, "{id}: SUBACK");
    raw
}

/// rumqttd's topic matcher slices `topic[..1]`, which panics when the first
/// character takes more than one byte. The router matches every publish
/// against its filters: with any subscription in place, one PUBLISH to `é`
/// killed the router's thread, and with it every subscription and connection.
/// Found as `10 0c 00 04 4d 51 54 54 04 02 00 3c 00 00 | 30 05 00 02 c3 a9 78`
/// (CONNECT; PUBLISH QoS 0 to "é") while another device held a subscription.
#[tokio::test]
async fn a_publish_to_a_topic_starting_with_a_multibyte_character_keeps_the_router() {
    let server = server().await;
    let addr = server.mqtt_addr();
    let _subscribed = subscriber(addr, "holds-a-filter", &["a"]).await;

    let mut raw = Raw::connect(addr).await;
    raw.send(&connect("")).await;
    raw.send(&publish(0, "é", None, b"x")).await;
    raw.send(&[0xe0, 0x00]).await;
    raw.closed_within(WAIT).await;

    still_serves(&server, "after-multibyte-publish").await;
}

/// The same matcher on the gateway's side: a retained message on `é/x`, then
/// a SUBSCRIBE whose filter the gateway matches against it (for the retained
/// message owed), panicked the subscriber's connection task.
/// Found as `30 08 00 04 c3 a9 2f 78 78 78` retained (`31 …`), then
/// `82 06 00 01 00 01 23 00` (SUBSCRIBE "#") from another device.
#[tokio::test]
async fn a_retained_message_on_a_multibyte_topic_is_matched_without_a_panic() {
    let server = server().await;
    let addr = server.mqtt_addr();
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect("retains")).await;
    raw.send(&publish(0x01, "é/x", None, b"xxx")).await;
    raw.send(&[0xe0, 0x00]).await;
    raw.closed_within(WAIT).await;

    let mut raw = Raw::connect(addr).await;
    raw.send(&connect("subscribes-to-all")).await;
    assert!(receives(&mut raw, &[0x20, 2, 0, 0]).await, "CONNACK");
    raw.send(&subscribe(1, &["#"])).await;
    assert!(
        receives(&mut raw, &[0x90, 3, 0, 1, 0]).await,
        "the subscriber's connection died instead of answering"
    );

    still_serves(&server, "after-multibyte-retained").await;
}

/// A shared and a plain subscription to one filter (`a` and `$share/g/a`) give
/// one router link two data requests on the same filter, which rumqttd expects
/// (it says so where it builds them) yet a `debug_assert!` in
/// `Router::prepare_filter` refuses: in a debug build (every test) the router's
/// thread panics. Found as `82 13 00 01 00 01 61 00 00 0a 24 73 68 61 72 65 2f
/// 67 2f 61 00` after a 3.1.1 CONNECT.
#[tokio::test]
async fn a_plain_and_a_shared_subscription_on_one_filter_keep_the_router() {
    let server = server().await;
    let addr = server.mqtt_addr();
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect("plain-and-shared")).await;
    assert!(receives(&mut raw, &[0x20, 2, 0, 0]).await, "CONNACK");
    raw.send(&subscribe(1, &["a", "$share/g/a"])).await;
    assert!(
        receives(&mut raw, &[0x90, 4, 0, 1, 0, 0]).await,
        "no SUBACK for both"
    );

    still_serves(&server, "after-plain-and-shared").await;
}

/// A link the router unscheduled (its notification buffer filled with
/// forwards) answers with `Event::Ready`; when the link leaves right after,
/// its DISCONNECT can reach the router first, and the router's scheduler
/// unwraps the tracker of a connection it already removed
/// (rumqttd `router/scheduler.rs:63`): its thread panics. A race, so the
/// device tries up to `TRIES` times. Found as: 3.1.1 CONNECT, SUBSCRIBE to
/// `#`, `+` and `a`, then 400 QoS 1 PUBLISHes to `a` (ids 1..=400) and EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_leaving_as_the_router_unschedules_it_keeps_the_router() {
    const TRIES: usize = 40;
    let server = server().await;
    let addr = server.mqtt_addr();
    let mut bytes = [connect("floods-itself"), subscribe(1, &["#", "+", "a"])].concat();
    for pkid in 1..=400 {
        bytes.extend(publish(0x02, "a", Some(pkid), b"x"));
    }
    for attempt in 0..TRIES {
        let mut raw = Raw::connect(addr).await;
        let (mut reader, mut writer) = raw.0.split();
        let send = async {
            let _ = writer.write_all(&bytes).await;
            let _ = writer.shutdown().await;
        };
        let drain = tokio::time::timeout(WAIT, async {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let (_, drained) = tokio::join!(send, drain);
        assert!(drained.is_ok(), "attempt {attempt}: the connection hung");
        still_serves(&server, &format!("after-flood-{attempt}")).await;
    }
}

/// An MQTT 5 CONNECT, clean start, keep-alive 60 s, no properties.
fn connect_v5(client_id: &str) -> Vec<u8> {
    let body = [
        &string(b"MQTT")[..],
        &[5, 0x02, 0, 60, 0],
        &string(client_id.as_bytes()),
    ]
    .concat();
    packet(0x10, &body)
}

/// Reads until the server closes; true when it sent exactly `expected` after
/// the CONNACK (`20 03 00 00 ..`, skipped).
async fn disconnected_with(raw: &mut Raw, expected: &[u8]) -> bool {
    let received = raw.closed_within(WAIT).await;
    received.windows(expected.len()).any(|w| w == expected)
}

/// The router drops a link that hands it a PUBLISH carrying a Subscription
/// Identifier. Publishes travel on links shared by many connections (the
/// publish lanes), so one device sending one (a protocol error,
/// [MQTT-3.3.4-6]) cut every connection on its lane off from subscribers,
/// and a wake-up for the dropped link then killed the router's thread. Found
/// by the fuzz target as a router panic in `Scheduler::reschedule`.
#[tokio::test]
async fn a_publish_carrying_a_subscription_identifier_is_refused_and_every_lane_still_routes() {
    let server = server().await;
    let addr = server.mqtt_addr();
    let mut listening = subscriber(addr, "lane-listener", &["lane/#"]).await;

    let mut raw = Raw::connect(addr).await;
    raw.send(&connect_v5("sends-a-subscription-id")).await;
    // PUBLISH QoS 0 to lane/bad, properties: Subscription Identifier 1.
    let body = [&string(b"lane/bad")[..], &[2, 0x0b, 0x01], b"x"].concat();
    raw.send(&packet(0x30, &body)).await;
    assert!(
        disconnected_with(&mut raw, &[0xe0, 0x01, 0x82]).await,
        "no DISCONNECT 0x82 for a client's Subscription Identifier"
    );

    // One connection after another lands on every lane in turn: each one's
    // publish reaches the subscriber.
    for i in 0..80u8 {
        let mut publisher = Raw::connect(addr).await;
        publisher
            .send(&connect(&format!("lane-publisher-{i}")))
            .await;
        assert!(receives(&mut publisher, &[0x20, 2, 0, 0]).await);
        publisher.send(&publish(0, "lane/ok", None, &[i])).await;
        let delivered = publish(0, "lane/ok", None, &[i]);
        assert!(
            receives(&mut listening, &delivered).await,
            "publisher {i}'s message never reached the subscriber: its lane is gone"
        );
    }
    still_serves(&server, "after-subscription-id").await;
}

/// The router drops a link whose SUBSCRIBE has Subscription Identifier 0
/// (a protocol error, [MQTT-3.8.2.1.2]); the link must refuse it first.
#[tokio::test]
async fn a_subscription_identifier_of_zero_is_a_protocol_error() {
    let server = server().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&connect_v5("subscription-id-zero")).await;
    // SUBSCRIBE pkid 1, properties: Subscription Identifier 0; filter "a" QoS 0.
    let body = [&[0, 1, 2, 0x0b, 0x00][..], &string(b"a"), &[0]].concat();
    raw.send(&packet(0x82, &body)).await;
    assert!(
        disconnected_with(&mut raw, &[0xe0, 0x01, 0x82]).await,
        "no DISCONNECT 0x82 for Subscription Identifier 0"
    );
    still_serves(&server, "after-subscription-id-zero").await;
}

/// A ShareName with a wildcard is not a shared subscription MQTT allows
/// ([MQTT-4.8.2-2]): the filter is invalid.
#[tokio::test]
async fn a_share_name_with_a_wildcard_is_an_invalid_filter() {
    let server = server().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&connect_v5("share-name-wildcard")).await;
    let body = [&[0, 1, 0][..], &string(b"$share/#/fuzz/a"), &[0]].concat();
    raw.send(&packet(0x82, &body)).await;
    assert!(
        disconnected_with(&mut raw, &[0xe0, 0x01, 0x8f]).await,
        "no DISCONNECT 0x8F for a ShareName with a wildcard"
    );
    still_serves(&server, "after-share-name-wildcard").await;
}
