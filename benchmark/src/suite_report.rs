//! The suite's report: a Markdown table with every figure, its ratio to
//! `direct` and to Mosquitto from the same run, the targets, and SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::report::RunResult;
use crate::suite::{Scenario, Usage, LIGHT_INFLIGHT, MATRIX_INFLIGHT, PAYLOADS};
use crate::verify::Verdict;

/// What a row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Tributary, topic routed to Kafka.
    Routed,
    /// Tributary, topic not routed (broker only).
    Unrouted,
    /// Mosquitto, broker only.
    Mosquitto,
    /// Straight to Kafka with rdkafka (acks=all): the ceiling.
    Direct,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Routed => "routed",
            Target::Unrouted => "unrouted",
            Target::Mosquitto => "mosquitto",
            Target::Direct => "direct",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Target::Routed => "r",
            Target::Unrouted => "u",
            Target::Mosquitto => "m",
            Target::Direct => "d",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Target::Routed => RGBColor(31, 119, 180),
            Target::Unrouted => RGBColor(44, 160, 44),
            Target::Mosquitto => RGBColor(214, 39, 40),
            Target::Direct => RGBColor(127, 127, 127),
        }
    }
}

/// One measured scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub target: Target,
    pub scenario: Scenario,
    pub result: RunResult,
    pub usage: Option<Usage>,
    pub verdict: Option<Verdict>,
}

impl Row {
    /// Server CPU time per completed message, in µs: the cost of a message
    /// whatever the load generator managed to push. `None` without a sampled
    /// server (`direct`) or without a completed message.
    pub fn cpu_us_per_message(&self) -> Option<f64> {
        let usage = self.usage?;
        (self.result.messages > 0).then(|| usage.cpu_secs * 1e6 / self.result.messages as f64)
    }
}

/// The row of `target` for `scenario`; `direct` has no QoS, so any QoS matches it.
fn find(rows: &[Row], target: Target, scenario: Scenario) -> Option<&Row> {
    rows.iter().find(|r| {
        r.target == target
            && r.scenario.payload == scenario.payload
            && r.scenario.connections == scenario.connections
            && r.scenario.inflight == scenario.inflight
            && (target == Target::Direct || r.scenario.qos == scenario.qos)
    })
}

fn ms(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// The whole Markdown report.
pub fn markdown(rows: &[Row], name: &str, seconds: f64, machine: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Tributary benchmark: {name}\n");
    let _ = writeln!(
        out,
        "Machine: {machine}. Local single-node Apache Kafka (scripts/kafka-local), \
         Tributary release build with default producer settings (acks=all, idempotence, \
         linger.ms=5 above 256 records in flight, none below), Mosquitto from Debian; \
         load generator on the same machine. \
         Each scenario ran {seconds} s with {MATRIX_INFLIGHT} messages in flight per \
         connection, except the light-load ones (one connection, {} in flight).\n",
        LIGHT_INFLIGHT.map(|n| n.to_string()).join(" or ")
    );
    let _ = writeln!(
        out,
        "Reproduce: `cargo build --release && target/release/tributary-bench suite{} --name {name}`\n",
        if seconds < 5.0 { " --quick" } else { "" }
    );
    targets(&mut out, rows);
    light_load(&mut out, rows);
    let _ = writeln!(
        out,
        "\n## All scenarios\n\nLatency in ms (publish → PUBACK/PUBCOMP; for `direct`, send → \
         delivery report; QoS 0 has none). CPU is the server's user+system time over wall \
         time; CPU µs/msg is the server's CPU time during the run divided by the messages \
         completed. Ratios compare msg/s with `direct` (same payload, connections and in \
         flight) and with Mosquitto (same QoS, payload, connections and in flight); \
         \"vs Mosquitto CPU\" compares CPU µs/msg with Mosquitto's (below 1× costs less).\n"
    );
    let _ = writeln!(
        out,
        "| target | QoS | payload | conns | in flight | msg/s | MB/s | p50 | p90 | p99 | p99.9 | max | CPU | CPU µs/msg | peak RSS | vs direct | vs Mosquitto | vs Mosquitto CPU | Kafka check |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in rows {
        let s = row.scenario;
        let r = &row.result;
        let latency = r.latency_us.map_or(
            [
                "—".to_owned(),
                "—".into(),
                "—".into(),
                "—".into(),
                "—".into(),
            ],
            |p| [ms(p.p50), ms(p.p90), ms(p.p99), ms(p.p999), ms(p.max)],
        );
        let (cpu, rss) = row.usage.map_or(("—".into(), "—".into()), |u| {
            (
                format!("{:.0} %", 100.0 * u.cpu_secs / u.wall_secs.max(1e-9)),
                format!("{:.1} MB", u.peak_rss_mb),
            )
        });
        let tributary = matches!(row.target, Target::Routed | Target::Unrouted);
        let vs_direct = find(rows, Target::Direct, s)
            .filter(|_| tributary)
            .map_or("—".into(), |d| {
                ratio(r.msgs_per_sec, d.result.msgs_per_sec)
            });
        let vs_mosquitto = find(rows, Target::Mosquitto, s)
            .filter(|_| tributary)
            .map_or("—".into(), |m| {
                ratio(r.msgs_per_sec, m.result.msgs_per_sec)
            });
        let cpu_per_message = row
            .cpu_us_per_message()
            .map_or("—".into(), |us| format!("{us:.1}"));
        let vs_mosquitto_cpu = find(rows, Target::Mosquitto, s)
            .filter(|_| tributary)
            .and_then(|m| Some(ratio(row.cpu_us_per_message()?, m.cpu_us_per_message()?)))
            .unwrap_or_else(|| "—".into());
        let check = row.verdict.as_ref().map_or("—".into(), |v| {
            format!("{} missing, {} dup", v.missing, v.duplicates)
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} B | {} | {} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.target.label(),
            if row.target == Target::Direct { "acks=all".to_owned() } else { s.qos.to_string() },
            s.payload,
            s.connections,
            s.inflight,
            r.msgs_per_sec,
            r.mb_per_sec,
            latency[0],
            latency[1],
            latency[2],
            latency[3],
            latency[4],
            cpu,
            cpu_per_message,
            rss,
            vs_direct,
            vs_mosquitto,
            vs_mosquitto_cpu,
            check
        );
    }
    let _ = writeln!(
        out,
        "\n![throughput]({name}-throughput.svg)\n\n![latency]({name}-latency.svg)"
    );
    out
}

/// The targets the team set, checked against this run.
fn targets(out: &mut String, rows: &[Row]) {
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "| target | scenario | measured | met |\n|---|---|---|---|"
    );
    for connections in [16, 256] {
        let s = Scenario {
            qos: 1,
            payload: 64,
            connections,
            inflight: MATRIX_INFLIGHT,
        };
        if let (Some(routed), Some(direct)) =
            (find(rows, Target::Routed, s), find(rows, Target::Direct, s))
        {
            let share = routed.result.msgs_per_sec / direct.result.msgs_per_sec.max(1e-9);
            let _ = writeln!(
                out,
                "| ≥ 70 % of direct throughput | QoS 1, routed, 64 B, {connections} conns | {:.0} % ({:.0} vs {:.0} msg/s) | {} |",
                share * 100.0,
                routed.result.msgs_per_sec,
                direct.result.msgs_per_sec,
                yes(share >= 0.7)
            );
            if let (Some(a), Some(b)) = (routed.result.latency_us, direct.result.latency_us) {
                let delta = (a.p99 as f64 - b.p99 as f64) / 1000.0;
                let _ = writeln!(
                    out,
                    "| p99 within 2 ms of direct | QoS 1, routed, 64 B, {connections} conns | {} vs {} ms ({delta:+.2} ms) | {} |",
                    ms(a.p99),
                    ms(b.p99),
                    yes(delta <= 2.0)
                );
            }
        }
    }
    // Routed at 256 connections, and broker only at 16 and 256, against
    // Mosquitto (broker only) in the same run.
    let versus_mosquitto = [
        (Target::Routed, 256),
        (Target::Unrouted, 16),
        (Target::Unrouted, 256),
    ];
    for payload in PAYLOADS {
        for (target, connections) in versus_mosquitto {
            let s = Scenario {
                qos: 1,
                payload,
                connections,
                inflight: MATRIX_INFLIGHT,
            };
            if let (Some(ours), Some(theirs)) =
                (find(rows, target, s), find(rows, Target::Mosquitto, s))
            {
                let times = ours.result.msgs_per_sec / theirs.result.msgs_per_sec.max(1e-9);
                let _ = writeln!(
                    out,
                    "| ≥ 3× Mosquitto (broker only) | QoS 1, {}, {payload} B, {connections} conns | {times:.2}× ({:.0} vs {:.0} msg/s) | {} |",
                    target.label(),
                    ours.result.msgs_per_sec,
                    theirs.result.msgs_per_sec,
                    yes(times >= 3.0)
                );
            }
        }
    }
    for connections in [16, 256] {
        let s = Scenario {
            qos: 1,
            payload: 64,
            connections,
            inflight: MATRIX_INFLIGHT,
        };
        if let Some(us) = find(rows, Target::Routed, s).and_then(Row::cpu_us_per_message) {
            let _ = writeln!(
                out,
                "| server CPU ≤ 5 µs per message | QoS 1, routed, 64 B, {connections} conns | {us:.1} µs | {} |",
                yes(us <= 5.0)
            );
        }
    }
    if let Some(row) = find(rows, Target::Routed, Scenario::light(1)) {
        if let Some(latency) = row.result.latency_us {
            let _ = writeln!(
                out,
                "| PUBACK p50 ≤ 1 ms, p99 ≤ 5 ms | QoS 1, routed, 64 B, 1 conn, 1 in flight | p50 {} ms, p99 {} ms | {} |",
                ms(latency.p50),
                ms(latency.p99),
                yes(latency.p50 <= 1_000 && latency.p99 <= 5_000)
            );
        }
    }
    if let Some(row) = find(rows, Target::Routed, Scenario::light(10)) {
        let missing = row.verdict.as_ref().map(|v| v.missing);
        let _ = writeln!(
            out,
            "| ≥ 5,000 msg/s, 0 missing | QoS 1, routed, 64 B, 1 conn, 10 in flight | {:.0} msg/s, {} | {} |",
            row.result.msgs_per_sec,
            missing.map_or("not verified".into(), |m| format!("{m} missing")),
            yes(row.result.msgs_per_sec >= 5_000.0 && missing == Some(0))
        );
    }
    let peak = rows
        .iter()
        .filter(|r| matches!(r.target, Target::Routed | Target::Unrouted))
        .filter_map(|r| r.usage.map(|u| u.peak_rss_mb))
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "| RSS < 100 MB | every Tributary scenario | peak {peak:.1} MB | {} |",
        yes(peak < 100.0)
    );
}

/// PUBACK latency and CPU cost when the broker is nearly idle: one
/// connection waiting for each acknowledgement (1 in flight) or keeping a few
/// outstanding (10). Throughput here is bounded by the round trip, not by the
/// broker, so latency is the figure; the same rows appear in the full table.
fn light_load(out: &mut String, rows: &[Row]) {
    let _ = writeln!(
        out,
        "\n## Light load: PUBACK latency\n\nQoS 1, 64 B, one connection. Latency in µs (publish → PUBACK): at this load the \
         round trip is tens of µs, which the full table's ms would round away.\n"
    );
    let _ = writeln!(
        out,
        "| target | in flight | msg/s | p50 | p99 | CPU µs/msg | vs Mosquitto CPU |\n|---|---|---|---|---|---|---|"
    );
    for inflight in LIGHT_INFLIGHT {
        let s = Scenario::light(inflight);
        for target in [Target::Routed, Target::Unrouted, Target::Mosquitto] {
            let Some(row) = find(rows, target, s) else {
                continue;
            };
            let (p50, p99) = row.result.latency_us.map_or(("—".into(), "—".into()), |p| {
                (p.p50.to_string(), p.p99.to_string())
            });
            let vs_mosquitto_cpu = find(rows, Target::Mosquitto, s)
                .filter(|_| target != Target::Mosquitto)
                .and_then(|m| Some(ratio(row.cpu_us_per_message()?, m.cpu_us_per_message()?)))
                .unwrap_or_else(|| "—".into());
            let _ = writeln!(
                out,
                "| {} | {inflight} | {:.0} | {p50} | {p99} | {} | {vs_mosquitto_cpu} |",
                target.label(),
                row.result.msgs_per_sec,
                row.cpu_us_per_message()
                    .map_or("—".into(), |us| format!("{us:.1}")),
            );
        }
    }
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

/// Writes `<name>-throughput.svg` and `<name>-latency.svg`.
pub fn charts(rows: &[Row], dir: &Path, name: &str) -> anyhow::Result<()> {
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut label = format!(
                "{} q{} {}B {}c",
                r.target.short(),
                r.scenario.qos,
                r.scenario.payload,
                r.scenario.connections
            );
            if r.scenario.is_light() {
                let _ = write!(label, " {}if", r.scenario.inflight);
            }
            label
        })
        .collect();
    let throughput: Vec<(f64, Target)> = rows
        .iter()
        .map(|r| (r.result.msgs_per_sec, r.target))
        .collect();
    bars(
        &dir.join(format!("{name}-throughput.svg")),
        "Throughput (msg/s)",
        &labels,
        &[("msg/s", throughput)],
    )?;
    let with_latency: Vec<(usize, &Row)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.result.latency_us.is_some())
        .collect();
    let latency_labels: Vec<String> = with_latency
        .iter()
        .map(|(i, _)| labels[*i].clone())
        .collect();
    let p = |pick: fn(&crate::report::Percentiles) -> u64| -> Vec<(f64, Target)> {
        with_latency
            .iter()
            .map(|(_, r)| {
                (
                    r.result.latency_us.as_ref().map_or(0, pick) as f64 / 1000.0,
                    r.target,
                )
            })
            .collect()
    };
    bars(
        &dir.join(format!("{name}-latency.svg")),
        "Latency p50 / p99 (ms)",
        &latency_labels,
        &[("p50", p(|l| l.p50)), ("p99", p(|l| l.p99))],
    )?;
    Ok(())
}

/// A grouped bar chart: one group per label, one bar per series, coloured by
/// target (later series lighter).
fn bars(
    path: &Path,
    title: &str,
    labels: &[String],
    series: &[(&str, Vec<(f64, Target)>)],
) -> anyhow::Result<()> {
    let max = series
        .iter()
        .flat_map(|(_, values)| values.iter().map(|(v, _)| *v))
        .fold(0.0, f64::max)
        .max(1e-9);
    let width = (labels.len() as u32 * 24).max(600) + 120;
    let root = SVGBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(110)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..labels.len() as f64, 0f64..max * 1.1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            labels.get(i).cloned().unwrap_or_default()
        })
        .x_label_style(
            ("sans-serif", 11)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .draw()?;
    let n = series.len() as f64;
    for (k, (_, values)) in series.iter().enumerate() {
        chart.draw_series(values.iter().enumerate().map(|(i, (value, target))| {
            let x0 = i as f64 + 0.1 + 0.8 * k as f64 / n;
            let x1 = x0 + 0.8 / n;
            let base = target.color();
            let shade = |c: u8| c.saturating_add((k as u8).saturating_mul(70));
            let color = RGBColor(shade(base.0), shade(base.1), shade(base.2));
            Rectangle::new([(x0, 0.0), (x1, *value)], color.filled())
        }))?;
    }
    root.present()?;
    Ok(())
}

/// The route formats' comparison: what each format costs per message next
/// to `raw`, same load, same JSON payload.
pub fn formats_markdown(rows: &[(&str, Row)], seconds: f64) -> String {
    let mut out = String::new();
    let Some((_, first)) = rows.first() else {
        return out;
    };
    let s = first.scenario;
    let _ = writeln!(
        out,
        "\n## Route formats: cost per message\n\nRouted, QoS {}, a {} B JSON payload, {} connections × {} in flight, \
         {seconds:.0} s each, same server; Avro without a registry (a registry is asked once per \
         schema, not per record). Every acknowledged message is looked for in Kafka and read back \
         through its format.\n",
        s.qos, s.payload, s.connections, s.inflight
    );
    let _ = writeln!(
        out,
        "| format | msg/s | p50 | p99 | CPU µs/msg | vs raw CPU | record size | Kafka check |\n|---|---|---|---|---|---|---|---|"
    );
    let raw = rows[0].1.cpu_us_per_message();
    for (label, row) in rows {
        let cpu = row.cpu_us_per_message();
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let check = row.verdict.as_ref().map_or("—".into(), |v| {
            if v.missing == 0 {
                format!("{} found, 0 missing", v.found)
            } else {
                format!("**{} missing**", v.missing)
            }
        });
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {} | {} | {} | {} | {} | {check} |",
            row.result.msgs_per_sec,
            row.result.latency_us.map_or("—".into(), |p| ms(p.p50)),
            row.result.latency_us.map_or("—".into(), |p| ms(p.p99)),
            cpu.map_or("—".into(), |c| format!("{c:.1}")),
            match (cpu, raw) {
                (Some(c), Some(r)) if r > 0.0 => format!("{:.2}×", c / r),
                _ => "—".into(),
            },
            record_size(label, s.payload),
        );
    }
    out
}

/// What a record of each format weighs for a JSON payload of `payload` bytes.
fn record_size(label: &str, payload: usize) -> String {
    if label.starts_with("avro") {
        "Avro datum".into()
    } else if label.contains("payload = json") {
        format!("{payload} B + envelope")
    } else if label.starts_with("json_envelope") {
        format!("{} B + envelope", payload.div_ceil(3) * 4)
    } else {
        format!("{payload} B")
    }
}
