//! The heart of the product, with real clients and a real Kafka: every PUBACKed
//! message is in Kafka, in order per client, and subscribers get it too.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::Message;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tributary_bridge::testing::{consume, create_topic, header, require_kafka, unique_topic};

const CLIENTS: usize = 10;

/// Polls `eventloop` until `count` PUBACKs came; panics naming `who` if the
/// connection fails or they do not come within `secs`.
async fn await_pubacks(
    eventloop: &mut rumqttc::EventLoop,
    count: usize,
    who: &str,
    secs: u64,
) -> usize {
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while acked < count {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{who}: connection failed: {e}"),
            Err(_) => panic!("{who}: only {acked} of {count} PUBACKs"),
        }
    }
    acked
}
const PER_CLIENT: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_clients_two_thousand_qos1_each_all_in_kafka_in_order_and_at_a_subscriber() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-gateway");
    create_topic(&bootstrap, &topic, 1).await;
    // Connections change pace (prompt ↔ batched producer) as the load
    // crosses this, often: order must survive every change.
    let server = common::start(&bootstrap, &[("load/#", &topic)], |config| {
        config.kafka.linger_above_records = 50;
    })
    .await;
    let addr = server.mqtt_addr();

    // A subscriber on the same topics, through the broker side.
    let mut sub_options = common::v4_options(addr, "subscriber");
    sub_options.set_inflight(100);
    let (sub, mut sub_loop) = AsyncClient::new(sub_options, 100);
    sub.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    let subscribed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await;
    assert!(subscribed.is_ok(), "no SUBACK");
    let subscriber = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while seen.len() < CLIENTS * PER_CLIENT {
            match tokio::time::timeout_at(deadline, sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    seen.insert(p.payload.to_vec());
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber connection failed: {e}"),
                Err(_) => break,
            }
        }
        seen.len()
    });

    let mut publishers = Vec::new();
    for c in 0..CLIENTS {
        publishers.push(tokio::spawn(async move {
            let client_id = format!("device-{c}");
            let mut options = common::v4_options(addr, &client_id);
            options.set_inflight(100);
            let (client, mut eventloop) = AsyncClient::new(options, 200);
            let sender = tokio::spawn(async move {
                for seq in 0..PER_CLIENT {
                    let payload = format!("{c}:{seq}");
                    client
                        .publish(format!("load/device-{c}"), QoS::AtLeastOnce, false, payload)
                        .await
                        .unwrap();
                }
                client
            });
            let acked = await_pubacks(&mut eventloop, PER_CLIENT, &client_id, 120).await;
            drop(sender.await.unwrap());
            acked
        }));
    }
    for publisher in publishers {
        assert_eq!(publisher.await.unwrap(), PER_CLIENT);
    }

    let messages = consume(
        &bootstrap,
        &topic,
        CLIENTS * PER_CLIENT,
        Duration::from_secs(60),
    );
    assert_eq!(
        messages.len(),
        CLIENTS * PER_CLIENT,
        "every PUBACKed message is in Kafka, once"
    );
    let mut next_seq: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        let payload = std::str::from_utf8(message.payload().unwrap()).unwrap();
        let (c, seq) = payload.split_once(':').unwrap();
        let seq: usize = seq.parse().unwrap();
        let client_id = format!("device-{c}");
        assert_eq!(
            message.key(),
            Some(client_id.as_bytes()),
            "key is the client id"
        );
        assert_eq!(
            header(message, "mqtt.client_id"),
            Some(client_id.as_bytes())
        );
        assert_eq!(
            header(message, "mqtt.topic"),
            Some(format!("load/device-{c}").as_bytes())
        );
        assert_eq!(header(message, "mqtt.qos"), Some(&b"1"[..]));
        assert_eq!(header(message, "mqtt.retain"), Some(&b"false"[..]));
        let expected = next_seq.entry(client_id.clone()).or_insert(0);
        assert_eq!(seq, *expected, "{client_id}: order kept in Kafka");
        *expected += 1;
    }
    assert_eq!(
        subscriber.await.unwrap(),
        CLIENTS * PER_CLIENT,
        "the subscriber got every message"
    );

    let received = common::metric(
        &server,
        "tributary_mqtt_publishes_received_total{qos=\"1\"}",
    )
    .await;
    assert!(received >= (CLIENTS * PER_CLIENT) as f64, "{received}");
    // The pace did change under this load (else order across changes was
    // not tested).
    let to_batched = common::metric(
        &server,
        "tributary_kafka_pace_changes_total{to=\"batched\"}",
    )
    .await;
    assert!(to_batched >= 1.0, "no connection changed pace");
    server.shutdown().await;
}

/// One device publishes steadily while others come and go: the load crosses
/// the pace threshold both ways, and its records change producer (prompt ↔
/// batched, the batched one lingering long) without ever overtaking each
/// other in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_changing_pace_under_changing_load_keeps_its_order_in_kafka() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-pace");
    create_topic(&bootstrap, &topic, 1).await;
    let server = common::start(&bootstrap, &[("pace/#", &topic)], |config| {
        config.kafka.linger_ms = 100;
        config.kafka.linger_above_records = 100;
    })
    .await;
    let addr = server.mqtt_addr();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // Paced, with room in its window: new publishes arrive while
            // earlier ones still linger in the batched producer.
            let mut options = common::v4_options(addr, "steady");
            options.set_inflight(50);
            let (client, mut eventloop) = AsyncClient::new(options, 10);
            let sender = tokio::spawn(async move {
                let mut sent = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 100_000 {
                    client
                        .publish("pace/steady", QoS::AtLeastOnce, false, format!("{sent}"))
                        .await
                        .unwrap();
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (client, sent)
            });
            let mut acked = 0usize;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            // Polled in short slices, so the sender's end is seen at once
            // (an idle connection's next event may be its keep-alive).
            while !sender.is_finished() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "steady: stuck after {acked} PUBACKs"
                );
                match tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => panic!("steady: connection failed: {e}"),
                }
            }
            let (_client, sent) = sender.await.unwrap();
            acked += await_pubacks(&mut eventloop, sent.saturating_sub(acked), "steady", 60).await;
            assert_eq!(acked, sent);
            sent
        })
    };

    // Twice: a crowd pushes the load over the threshold, then leaves.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut crowd = Vec::new();
        for c in 0..4 {
            crowd.push(tokio::spawn(async move {
                let client_id = format!("crowd-{round}-{c}");
                let mut options = common::v4_options(addr, &client_id);
                options.set_inflight(100);
                let (client, mut eventloop) = AsyncClient::new(options, 200);
                let sender = tokio::spawn(async move {
                    for seq in 0..500 {
                        client
                            .publish("pace/crowd", QoS::AtLeastOnce, false, format!("x{seq}"))
                            .await
                            .unwrap();
                    }
                    client
                });
                await_pubacks(&mut eventloop, 500, &client_id, 60).await;
                drop(sender.await.unwrap());
            }));
        }
        for member in crowd {
            member.await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = steady.await.unwrap();

    let messages = consume(&bootstrap, &topic, sent + 4_000, Duration::from_secs(60));
    let steady_seqs: Vec<usize> = messages
        .iter()
        .filter(|m| m.key() == Some(&b"steady"[..]))
        .map(|m| {
            std::str::from_utf8(m.payload().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(steady_seqs.len(), sent, "every steady message, once");
    let out_of_order = steady_seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(
        out_of_order, 0,
        "steady's records overtook each other in Kafka"
    );
    let back_to_prompt =
        common::metric(&server, "tributary_kafka_pace_changes_total{to=\"prompt\"}").await;
    assert!(
        back_to_prompt >= 2.0,
        "the pace did not come back: {back_to_prompt}"
    );
    println!("steady sent {sent}; pace changes back to prompt: {back_to_prompt}");
    server.shutdown().await;
}
