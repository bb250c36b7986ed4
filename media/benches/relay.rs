//! How many simultaneous two-party video consults the SFU relays on this machine before
//! packet loss passes 1%, and what each consult costs in CPU (issue #7's acceptance figure).
//!
//! The bench process runs the [`Sfu`] on 127.0.0.1 and nothing else; the participants are
//! `webrtc`-crate peers (as in `tests/consult_media.rs`) in a child process, the bench binary
//! re-executed with `MEDHUB_RELAY_BENCH_ROLE=clients`, so that `/proc/self/stat` of the bench
//! process is the SFU's CPU alone. The two talk JSON lines over the child's stdin and stdout:
//! the hub's signals go down, the participants' answers and candidates come up, and on request
//! the child reports what its participants received.
//!
//! Each participant sends a 30 fps camera (four RTP packets of 1,100 payload bytes a frame,
//! marker on the last: about 1 Mbit/s, what a consult's VP8 runs at) and a 50 packets/s
//! microphone (100 bytes, Opus-sized). Every payload carries its send time, so the receiving
//! participant (same process, same clock) measures the one-way latency through the SFU, and
//! counts loss from the RTP sequence numbers of each stream it receives (after the NACK
//! retransmissions both ends do, as a browser would experience it).
//!
//! The bench adds consults step by step, lets each step settle, measures it for a window and
//! stops at the first step whose loss exceeds 1%, or at the cap or the time budget.
//!
//! Run: `cargo bench -p medhub-media --bench relay`. Knobs (environment):
//! `RELAY_BENCH_WINDOW_SECS` (10), `RELAY_BENCH_WARMUP_SECS` (3), `RELAY_BENCH_MAX_CONSULTS`
//! (256), `RELAY_BENCH_BUDGET_SECS` (280), `RUST_LOG` (warnings but ICE's pre-candidate noise, on stderr).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use uuid::Uuid;

use medhub_media::{MediaConfig, Sfu, SignalIn};

const ROLE_ENV: &str = "MEDHUB_RELAY_BENCH_ROLE";
const LOSS_LIMIT_PERCENT: f64 = 1.0;
/// Coarse at first, then finer where a small machine tends to reach its limit.
const STEPS: [usize; 19] = [
    1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256,
];

const VIDEO_FPS: u64 = 30;
const VIDEO_PACKETS_PER_FRAME: usize = 4;
const VIDEO_PAYLOAD_BYTES: usize = 1_100;
const AUDIO_PACKETS_PER_SECOND: u64 = 50;
const AUDIO_PAYLOAD_BYTES: usize = 100;
/// RTP packets one participant sends a second; each is forwarded to the one other participant.
const PACKETS_PER_PARTICIPANT_SECOND: f64 =
    (VIDEO_FPS as usize * VIDEO_PACKETS_PER_FRAME) as f64 + AUDIO_PACKETS_PER_SECOND as f64;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 a second on Linux (a fixed ABI
/// value, whatever the kernel's own tick rate).
const USER_HZ: f64 = 100.0;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,webrtc_ice=error")),
        )
        // The clients' stdout is the wire to the SFU process.
        .with_writer(std::io::stderr)
        .try_init();
    if std::env::var(ROLE_ENV).as_deref() == Ok("clients") {
        runtime.block_on(clients::run())
    } else {
        runtime.block_on(hub::run())
    }
}

/// SFU process → clients process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "to_clients", rename_all = "snake_case")]
enum ToClients {
    /// Create the participant's peer connection; its signals follow.
    Join {
        participant: Uuid,
    },
    /// A `SignalOut` of the hub, as the consult WebSocket carries it.
    Signal {
        participant: Uuid,
        signal: serde_json::Value,
    },
    Report,
}

/// Clients process → SFU process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "from_clients", rename_all = "snake_case")]
enum FromClients {
    Signal { participant: Uuid, signal: SignalIn },
    Failed { participant: Uuid, error: String },
    Report(ClientsReport),
}

/// What the participants sent and received since they started (cumulative, so the SFU side
/// takes differences), and the latencies seen since the previous report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ClientsReport {
    /// Received streams that have delivered at least a few packets.
    streams_flowing: usize,
    /// RTP packets sent by all participants.
    sent: u64,
    /// Packets the receivers should have had by their streams' sequence numbers.
    expected: u64,
    /// Distinct packets the receivers had.
    received: u64,
    cpu_seconds: f64,
    latency_samples: usize,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
}

/// utime + stime of this process, all threads.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name, starting with field 3 (state); utime and
    // stime are fields 14 and 15.
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / USER_HZ
}

/// CPU time the whole machine spent busy (all processes, all CPUs), from `/proc/stat`.
fn machine_busy_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let Some(total) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return f64::NAN;
    };
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let ticks: Vec<u64> = total
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|value| value.parse().unwrap_or(0))
        .collect();
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, ticks)| ticks)
        .sum();
    busy as f64 / USER_HZ
}

/// Datagrams the kernel dropped because a UDP socket's receive buffer was full (machine-wide:
/// `/proc/net/snmp`, `Udp: RcvbufErrors`).
fn udp_receive_buffer_drops() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

mod hub {
    //! The bench proper: the SFU, the ramp and the table.

    use super::*;
    use medhub_media::Peer;

    struct Hub {
        sfu: Sfu,
        registry: prometheus::Registry,
        to_clients: mpsc::UnboundedSender<ToClients>,
        /// Where each participant's answers and candidates go, in order, to its `Peer`.
        inbound: Arc<Mutex<HashMap<Uuid, mpsc::UnboundedSender<SignalIn>>>>,
        reports: mpsc::UnboundedReceiver<ClientsReport>,
        failures: Arc<Mutex<Vec<String>>>,
        consults: usize,
    }

    /// One reading of everything a step's figures are differences of.
    struct Reading {
        at: Instant,
        sfu_cpu_seconds: f64,
        machine_busy_seconds: f64,
        udp_drops: u64,
        bytes_forwarded: f64,
        packets_received: f64,
        packets_lost_in: f64,
        clients: ClientsReport,
    }

    struct Row {
        consults: usize,
        relayed_mbit_s: f64,
        loss_percent: f64,
    }

    pub async fn run() -> anyhow::Result<()> {
        let window = Duration::from_secs(env_number("RELAY_BENCH_WINDOW_SECS", 10));
        let warmup = Duration::from_secs(env_number("RELAY_BENCH_WARMUP_SECS", 3));
        let max_consults = env_number("RELAY_BENCH_MAX_CONSULTS", 256) as usize;
        let budget = Duration::from_secs(env_number("RELAY_BENCH_BUDGET_SECS", 280));
        let started = Instant::now();

        let registry = prometheus::Registry::new();
        let config = MediaConfig {
            include_loopback: true,
            ..MediaConfig::default()
        };
        let sfu = Sfu::with_ip_filter(config, &registry, |ip| ip.is_loopback() && ip.is_ipv4())?;

        let executable = std::env::current_exe().context("finding the bench executable")?;
        let mut child = tokio::process::Command::new(executable)
            .env(ROLE_ENV, "clients")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the clients process")?;
        let child_stdin = child.stdin.take().context("clients stdin")?;
        let child_stdout = child.stdout.take().context("clients stdout")?;

        let (to_clients, mut outgoing) = mpsc::unbounded_channel::<ToClients>();
        tokio::spawn(async move {
            let mut stdin = child_stdin;
            while let Some(message) = outgoing.recv().await {
                let mut line = serde_json::to_string(&message).expect("messages serialise");
                line.push('\n');
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });

        let inbound: Arc<Mutex<HashMap<Uuid, mpsc::UnboundedSender<SignalIn>>>> = Arc::default();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        {
            let inbound = Arc::clone(&inbound);
            let failures = Arc::clone(&failures);
            tokio::spawn(async move {
                let mut lines = BufReader::new(child_stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<FromClients>(&line) {
                        Ok(FromClients::Signal {
                            participant,
                            signal,
                        }) => {
                            if let Some(to_peer) = inbound.lock().unwrap().get(&participant) {
                                let _ = to_peer.send(signal);
                            }
                        }
                        Ok(FromClients::Failed { participant, error }) => failures
                            .lock()
                            .unwrap()
                            .push(format!("participant {participant}: {error}")),
                        Ok(FromClients::Report(report)) => {
                            let _ = reports_tx.send(report);
                        }
                        Err(error) => failures.lock().unwrap().push(format!(
                            "unreadable line from the clients ({error}): {line}"
                        )),
                    }
                }
            });
        }

        let mut hub = Hub {
            sfu,
            registry,
            to_clients,
            inbound,
            reports,
            failures,
            consults: 0,
        };

        println!("medhub SFU relay benchmark: two-party consults, each participant sending");
        println!(
            "  {VIDEO_FPS} fps video ({VIDEO_PACKETS_PER_FRAME} x {VIDEO_PAYLOAD_BYTES} B RTP payload a frame) + {AUDIO_PACKETS_PER_SECOND} audio packets/s ({AUDIO_PAYLOAD_BYTES} B), over 127.0.0.1"
        );
        println!(
            "  SFU in this process (pid {}), participants in a child process (pid {}); CPU from /proc/<pid>/stat",
            std::process::id(),
            child.id().unwrap_or(0)
        );
        println!(
            "  {} CPUs, load average {}, net.core.rmem_default {} B; window {}s after {}s warm-up",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average(),
            std::fs::read_to_string("/proc/sys/net/core/rmem_default")
                .map(|value| value.trim().to_owned())
                .unwrap_or_else(|_| "?".into()),
            window.as_secs(),
            warmup.as_secs()
        );
        println!();
        println!(
            "{:>8} {:>7} {:>9} {:>8} {:>8} {:>9} {:>15} {:>9} {:>12} {:>12} {:>11} {:>8} {:>9}",
            "consults",
            "people",
            "Mbit/s",
            "loss %",
            "in-gap %",
            "udp drops",
            "lat p50/p99 ms",
            "SFU CPU%",
            "SFU %/cons.",
            "clients CPU%",
            "others CPU%",
            "offered%",
            "connect s"
        );

        let mut under_limit: Option<Row> = None;
        let mut over_limit: Option<Row> = None;
        let mut stop_reason = String::from("the last step");
        let mut last_step_took = Duration::ZERO;
        for &target in STEPS.iter() {
            if target > max_consults {
                stop_reason =
                    format!("the cap of {max_consults} consults (RELAY_BENCH_MAX_CONSULTS)");
                break;
            }
            let projected =
                started.elapsed() + last_step_took.max(warmup + window) + Duration::from_secs(5);
            if projected > budget {
                stop_reason = format!(
                    "the time budget of {}s (RELAY_BENCH_BUDGET_SECS)",
                    budget.as_secs()
                );
                break;
            }
            let step_started = Instant::now();
            hub.add_consults(target - hub.consults).await?;
            let connect_started = Instant::now();
            let connect_deadline = Duration::from_secs(60);
            let mut connected = false;
            while !connected {
                let report = hub.report().await?;
                connected = report.streams_flowing >= 2 * 2 * hub.consults;
                if !connected && connect_started.elapsed() > connect_deadline {
                    let failures = hub.failures.lock().unwrap().clone();
                    println!(
                        "{target:>8}: only {} of {} streams flowing after {}s; stopping. Failures: {failures:?}",
                        report.streams_flowing,
                        4 * hub.consults,
                        connect_deadline.as_secs()
                    );
                    stop_reason = "participants that did not connect".into();
                    break;
                }
                if !connected {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            if !connected {
                break;
            }
            let connect_seconds = connect_started.elapsed().as_secs_f64();
            tokio::time::sleep(warmup).await;
            let before = hub.reading().await?;
            tokio::time::sleep(window).await;
            let after = hub.reading().await?;
            let row = print_row(hub.consults, connect_seconds, &before, &after);
            last_step_took = step_started.elapsed();
            if row.loss_percent > LOSS_LIMIT_PERCENT {
                over_limit = Some(row);
                stop_reason = format!("loss above {LOSS_LIMIT_PERCENT}%");
                break;
            }
            under_limit = Some(row);
        }

        println!();
        println!("Mbit/s: RTP the SFU forwarded (out); loss: packets missing at the receiving participants by RTP");
        println!("sequence number, after NACK retransmission; in-gap: sequence gaps the SFU saw on arrival;");
        println!("udp drops: datagrams the kernel dropped on full socket receive buffers (whole machine);");
        println!("latency: one-way, sender to receiver through the SFU; CPU: % of one core, from /proc (SFU: the");
        println!("bench process; clients: the participants' process; others: the rest of the machine); offered:");
        println!("packets the participants sent vs nominal; connect: until every new participant received media.");
        println!(
            "stopped at {stop_reason}; load average now {}",
            load_average()
        );
        match &under_limit {
            Some(row) => println!(
                "largest step under {LOSS_LIMIT_PERCENT}% loss: {} consults ({} participants, {:.1} Mbit/s relayed, {:.2}% loss)",
                row.consults,
                2 * row.consults,
                row.relayed_mbit_s,
                row.loss_percent
            ),
            None => println!("no step stayed under {LOSS_LIMIT_PERCENT}% loss"),
        }
        if let Some(row) = over_limit {
            println!(
                "first step over: {} consults ({:.2}% loss)",
                row.consults, row.loss_percent
            );
        }
        let failures = hub.failures.lock().unwrap().clone();
        if !failures.is_empty() {
            println!("client failures ({}):", failures.len());
            for failure in failures.iter().take(10) {
                println!("  {failure}");
            }
        }
        // Closing hundreds of peer connections one by one proves nothing here: the child is
        // killed and this process exits.
        let _ = child.start_kill();
        Ok(())
    }

    impl Hub {
        async fn add_consults(&mut self, count: usize) -> anyhow::Result<()> {
            let mut joins = tokio::task::JoinSet::new();
            for _ in 0..count {
                let room = Uuid::new_v4();
                for _ in 0..2 {
                    let sfu = self.sfu.clone();
                    let to_clients = self.to_clients.clone();
                    let inbound = Arc::clone(&self.inbound);
                    let failures = Arc::clone(&self.failures);
                    joins.spawn(join_participant(sfu, room, to_clients, inbound, failures));
                }
            }
            while let Some(joined) = joins.join_next().await {
                joined.context("a join task panicked")??;
            }
            self.consults += count;
            Ok(())
        }

        async fn report(&mut self) -> anyhow::Result<ClientsReport> {
            self.to_clients
                .send(ToClients::Report)
                .context("the clients process is gone")?;
            tokio::time::timeout(Duration::from_secs(20), self.reports.recv())
                .await
                .context("the clients process did not report within 20 s")?
                .context("the clients process is gone")
        }

        async fn reading(&mut self) -> anyhow::Result<Reading> {
            let clients = self.report().await?;
            let metrics = metric_values(&self.registry);
            Ok(Reading {
                at: Instant::now(),
                sfu_cpu_seconds: process_cpu_seconds(),
                machine_busy_seconds: machine_busy_cpu_seconds(),
                udp_drops: udp_receive_buffer_drops(),
                bytes_forwarded: metrics("medhub_media_rtp_bytes_forwarded_total"),
                packets_received: metrics("medhub_media_rtp_packets_received_total"),
                packets_lost_in: metrics("medhub_media_rtp_packets_lost_total"),
                clients,
            })
        }
    }

    async fn join_participant(
        sfu: Sfu,
        room: Uuid,
        to_clients: mpsc::UnboundedSender<ToClients>,
        inbound: Arc<Mutex<HashMap<Uuid, mpsc::UnboundedSender<SignalIn>>>>,
        failures: Arc<Mutex<Vec<String>>>,
    ) -> anyhow::Result<()> {
        let participant = Uuid::new_v4();
        let (to_peer, mut from_participant) = mpsc::unbounded_channel::<SignalIn>();
        inbound.lock().unwrap().insert(participant, to_peer);
        // The clients must have the participant before its first offer reaches them.
        to_clients
            .send(ToClients::Join { participant })
            .context("the clients process is gone")?;
        let (peer, mut signals): (Peer, _) = sfu.join(room, participant).await?;
        {
            let to_clients = to_clients.clone();
            tokio::spawn(async move {
                while let Some(signal) = signals.recv().await {
                    let signal = serde_json::to_value(&signal).expect("signals serialise");
                    if to_clients
                        .send(ToClients::Signal {
                            participant,
                            signal,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        // Owns the Peer for the rest of the run, applying the participant's signals in order.
        tokio::spawn(async move {
            while let Some(signal) = from_participant.recv().await {
                if let Err(error) = peer.signal(signal).await {
                    failures.lock().unwrap().push(format!(
                        "participant {participant}: hub refused a signal: {error}"
                    ));
                }
            }
        });
        Ok(())
    }

    fn print_row(consults: usize, connect_seconds: f64, before: &Reading, after: &Reading) -> Row {
        let seconds = after.at.duration_since(before.at).as_secs_f64();
        let expected = after
            .clients
            .expected
            .saturating_sub(before.clients.expected) as f64;
        let received = after
            .clients
            .received
            .saturating_sub(before.clients.received) as f64;
        let loss_percent = if expected > 0.0 {
            (expected - received).max(0.0) / expected * 100.0
        } else {
            100.0
        };
        let received_in = after.packets_received - before.packets_received;
        let gaps_in = if received_in > 0.0 {
            (after.packets_lost_in - before.packets_lost_in) / received_in * 100.0
        } else {
            0.0
        };
        let relayed_mbit_s = (after.bytes_forwarded - before.bytes_forwarded) * 8.0 / seconds / 1e6;
        let sfu_cpu_percent = (after.sfu_cpu_seconds - before.sfu_cpu_seconds) / seconds * 100.0;
        let clients_cpu_percent =
            (after.clients.cpu_seconds - before.clients.cpu_seconds) / seconds * 100.0;
        // Whatever else the machine ran meanwhile (other builds, tests), in % of one core.
        let others_cpu_percent =
            (after.machine_busy_seconds - before.machine_busy_seconds) / seconds * 100.0
                - sfu_cpu_percent
                - clients_cpu_percent;
        let nominal_sent = PACKETS_PER_PARTICIPANT_SECOND * (2 * consults) as f64 * seconds;
        let offered_percent =
            after.clients.sent.saturating_sub(before.clients.sent) as f64 / nominal_sent * 100.0;
        let latency = match (after.clients.latency_p50_ms, after.clients.latency_p99_ms) {
            (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1}"),
            _ => "-".into(),
        };
        println!(
            "{:>8} {:>7} {:>9.1} {:>8.3} {:>8.3} {:>9} {:>15} {:>9.1} {:>12.2} {:>12.1} {:>11.1} {:>8.1} {:>9.1}",
            consults,
            2 * consults,
            relayed_mbit_s,
            loss_percent,
            gaps_in,
            after.udp_drops.saturating_sub(before.udp_drops),
            latency,
            sfu_cpu_percent,
            sfu_cpu_percent / consults as f64,
            clients_cpu_percent,
            others_cpu_percent.max(0.0),
            offered_percent,
            connect_seconds
        );
        Row {
            consults,
            relayed_mbit_s,
            loss_percent,
        }
    }

    /// The value of each counter as `/metrics` shows it.
    fn metric_values(registry: &prometheus::Registry) -> impl Fn(&str) -> f64 {
        let values: HashMap<String, f64> = registry
            .gather()
            .iter()
            .map(|family| {
                let value = family
                    .get_metric()
                    .iter()
                    .map(|metric| metric.get_counter().get_value())
                    .sum();
                (family.name().to_owned(), value)
            })
            .collect();
        move |name| values.get(name).copied().unwrap_or(0.0)
    }

    fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|text| {
                text.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|_| "?".into())
    }
}

mod clients {
    //! The participants: one `webrtc` peer connection each, sending synthetic camera and
    //! microphone RTP and accounting for what they receive.

    use super::*;
    use webrtc::api::interceptor_registry::register_default_interceptors;
    use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
    use webrtc::api::setting_engine::SettingEngine;
    use webrtc::api::{APIBuilder, API};
    use webrtc::ice::mdns::MulticastDnsMode;
    use webrtc::ice::network_type::NetworkType;
    use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
    use webrtc::interceptor::registry::Registry as InterceptorRegistry;
    use webrtc::peer_connection::configuration::RTCConfiguration;
    use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
    use webrtc::rtp::header::Header;
    use webrtc::rtp::packet::Packet;
    use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
    use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
    use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

    /// Packets further behind a stream's newest than this are too late to tell from duplicates.
    const RECENT: usize = 2_048;

    /// The clock the send times in the payloads count from (one process: one clock).
    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn now_nanos() -> u64 {
        epoch().elapsed().as_nanos() as u64
    }

    /// One received stream, accounted by RTP sequence number.
    struct StreamStats {
        /// Extended (unwrapped) sequence numbers, offset by 2^32 so reordering cannot underflow.
        first: u64,
        highest: u64,
        received: u64,
        /// The extended sequence number last stored in each slot (0: none), to drop duplicates.
        recent: Vec<u64>,
        latencies_us: Vec<u32>,
    }

    impl StreamStats {
        fn new(sequence_number: u16) -> StreamStats {
            let extended = u64::from(sequence_number) + (1 << 32);
            StreamStats {
                first: extended,
                highest: extended - 1,
                received: 0,
                recent: vec![0; RECENT],
                latencies_us: Vec::new(),
            }
        }

        /// Records a packet; false for a duplicate or one too late to account.
        fn record(&mut self, sequence_number: u16) -> bool {
            let ahead = sequence_number.wrapping_sub(self.highest as u16) as i16;
            let extended = (self.highest as i64 + i64::from(ahead)) as u64;
            if extended < self.first || extended + RECENT as u64 <= self.highest {
                return false;
            }
            let slot = (extended % RECENT as u64) as usize;
            if self.recent[slot] == extended {
                return false;
            }
            self.recent[slot] = extended;
            self.highest = self.highest.max(extended);
            self.received += 1;
            true
        }

        fn expected(&self) -> u64 {
            self.highest + 1 - self.first
        }
    }

    #[derive(Default)]
    struct Tally {
        streams: Mutex<Vec<Arc<Mutex<StreamStats>>>>,
        sent: AtomicU64,
    }

    impl Tally {
        fn report(&self) -> ClientsReport {
            let streams = self.streams.lock().unwrap().clone();
            let mut report = ClientsReport {
                sent: self.sent.load(Ordering::Relaxed),
                cpu_seconds: process_cpu_seconds(),
                ..ClientsReport::default()
            };
            let mut latencies = Vec::new();
            for stream in streams {
                let mut stream = stream.lock().unwrap();
                if stream.received >= 10 {
                    report.streams_flowing += 1;
                }
                report.expected += stream.expected();
                report.received += stream.received;
                latencies.append(&mut stream.latencies_us);
            }
            latencies.sort_unstable();
            report.latency_samples = latencies.len();
            let percentile = |fraction: f64| {
                let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
                latencies.get(index).map(|&us| f64::from(us) / 1_000.0)
            };
            report.latency_p50_ms = percentile(0.50);
            report.latency_p99_ms = percentile(0.99);
            report
        }
    }

    pub async fn run() -> anyhow::Result<()> {
        epoch();
        let api = Arc::new(client_api()?);
        let tally = Arc::new(Tally::default());
        let (to_hub, mut outgoing) = mpsc::unbounded_channel::<FromClients>();
        let writer = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(message) = outgoing.recv().await {
                let mut line = serde_json::to_string(&message).expect("messages serialise");
                line.push('\n');
                if stdout.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
                let _ = stdout.flush().await;
            }
        });

        let mut participants: HashMap<Uuid, mpsc::UnboundedSender<serde_json::Value>> =
            HashMap::new();
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        // Ends when the SFU process closes the pipe (or dies).
        while let Some(line) = lines.next_line().await? {
            match serde_json::from_str::<ToClients>(&line)
                .with_context(|| format!("unreadable line from the SFU process: {line}"))?
            {
                ToClients::Join { participant } => {
                    let (signals_tx, signals) = mpsc::unbounded_channel();
                    participants.insert(participant, signals_tx);
                    let api = Arc::clone(&api);
                    let tally = Arc::clone(&tally);
                    let to_hub = to_hub.clone();
                    tokio::spawn(async move {
                        if let Err(error) =
                            participate(api, participant, signals, tally, to_hub.clone()).await
                        {
                            let _ = to_hub.send(FromClients::Failed {
                                participant,
                                error: format!("{error:#}"),
                            });
                        }
                    });
                }
                ToClients::Signal {
                    participant,
                    signal,
                } => {
                    if let Some(signals) = participants.get(&participant) {
                        let _ = signals.send(signal);
                    }
                }
                ToClients::Report => {
                    let _ = to_hub.send(FromClients::Report(tally.report()));
                }
            }
        }
        drop(to_hub);
        writer.abort();
        Ok(())
    }

    fn client_api() -> anyhow::Result<API> {
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs()?;
        let interceptors =
            register_default_interceptors(InterceptorRegistry::new(), &mut media_engine)?;
        let mut settings = SettingEngine::default();
        settings.set_include_loopback_candidate(true);
        settings.set_ip_filter(Box::new(|ip| ip.is_loopback() && ip.is_ipv4()));
        settings.set_network_types(vec![NetworkType::Udp4]);
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        Ok(APIBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(interceptors)
            .with_setting_engine(settings)
            .build())
    }

    /// One participant for the rest of the run: camera and microphone on, answering the hub.
    async fn participate(
        api: Arc<API>,
        participant: Uuid,
        mut signals: mpsc::UnboundedReceiver<serde_json::Value>,
        tally: Arc<Tally>,
        to_hub: mpsc::UnboundedSender<FromClients>,
    ) -> anyhow::Result<()> {
        let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
        let stream = format!("camera-of-{participant}");
        let microphone = Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                ..Default::default()
            },
            "microphone".to_owned(),
            stream.clone(),
        ));
        let camera = Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                ..Default::default()
            },
            "camera".to_owned(),
            stream,
        ));
        for track in [
            Arc::clone(&microphone) as Arc<dyn TrackLocal + Send + Sync>,
            Arc::clone(&camera) as Arc<dyn TrackLocal + Send + Sync>,
        ] {
            let sender = pc.add_track(track).await?;
            // The interceptors answer NACKs only while the sender's RTCP is read; the SFU's
            // keyframe requests are ignored (the synthetic camera has no keyframes to give).
            tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
        }

        {
            let tally = Arc::clone(&tally);
            pc.on_track(Box::new(move |track, _receiver, _transceiver| {
                let tally = Arc::clone(&tally);
                tokio::spawn(async move {
                    let mut stats: Option<Arc<Mutex<StreamStats>>> = None;
                    while let Ok((packet, _)) = track.read_rtp().await {
                        let arrived = now_nanos();
                        let stats = stats.get_or_insert_with(|| {
                            let stats = Arc::new(Mutex::new(StreamStats::new(
                                packet.header.sequence_number,
                            )));
                            tally.streams.lock().unwrap().push(Arc::clone(&stats));
                            stats
                        });
                        let mut stats = stats.lock().unwrap();
                        if stats.record(packet.header.sequence_number) {
                            if let Some(sent) = packet
                                .payload
                                .get(1..9)
                                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                            {
                                let micros =
                                    arrived.saturating_sub(u64::from_be_bytes(sent)) / 1_000;
                                stats
                                    .latencies_us
                                    .push(micros.min(u64::from(u32::MAX)) as u32);
                            }
                        }
                    }
                });
                Box::pin(async {})
            }));
        }
        {
            let to_hub = to_hub.clone();
            pc.on_ice_candidate(Box::new(move |candidate| {
                if let Some(candidate) = candidate
                    .and_then(|candidate| candidate.to_json().ok())
                    .and_then(|init| serde_json::to_value(init).ok())
                {
                    let _ = to_hub.send(FromClients::Signal {
                        participant,
                        signal: SignalIn::Candidate { candidate },
                    });
                }
                Box::pin(async {})
            }));
        }
        tokio::spawn(send_media(microphone, camera, Arc::clone(&tally)));

        while let Some(signal) = signals.recv().await {
            match signal["kind"].as_str() {
                Some("offer") => {
                    let sdp = signal["sdp"]
                        .as_str()
                        .context("offer without sdp")?
                        .to_owned();
                    pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
                        .await
                        .context("applying the hub's offer")?;
                    let answer = pc
                        .create_answer(None)
                        .await
                        .context("creating the answer")?;
                    pc.set_local_description(answer.clone())
                        .await
                        .context("applying the own answer")?;
                    let _ = to_hub.send(FromClients::Signal {
                        participant,
                        signal: SignalIn::Answer { sdp: answer.sdp },
                    });
                }
                Some("candidate") => {
                    let candidate: RTCIceCandidateInit =
                        serde_json::from_value(signal["candidate"].clone())
                            .context("the hub's candidate is not RTCIceCandidateInit JSON")?;
                    pc.add_ice_candidate(candidate)
                        .await
                        .context("adding the hub's candidate")?;
                }
                Some("state") => {
                    if matches!(signal["state"].as_str(), Some("failed" | "closed")) {
                        bail!("the hub reports the connection {}", signal["state"]);
                    }
                }
                other => bail!("unknown signal kind {other:?}"),
            }
        }
        Ok(())
    }

    /// The synthetic camera and microphone: paced packets whose payload starts with a payload
    /// descriptor (or TOC) byte and the send time.
    async fn send_media(
        microphone: Arc<TrackLocalStaticRTP>,
        camera: Arc<TrackLocalStaticRTP>,
        tally: Arc<Tally>,
    ) {
        let mut video_ticks =
            tokio::time::interval(Duration::from_nanos(1_000_000_000 / VIDEO_FPS));
        let mut audio_ticks = tokio::time::interval(Duration::from_nanos(
            1_000_000_000 / AUDIO_PACKETS_PER_SECOND,
        ));
        let mut video = Header {
            version: 2,
            payload_type: 96,
            ..Default::default()
        };
        let mut audio = Header {
            version: 2,
            payload_type: 111,
            ..Default::default()
        };
        loop {
            tokio::select! {
                _ = video_ticks.tick() => {
                    for index in 0..VIDEO_PACKETS_PER_FRAME {
                        // VP8 payload descriptor: S (start of partition) on the frame's first packet.
                        let descriptor = if index == 0 { 0x10 } else { 0x00 };
                        video.marker = index + 1 == VIDEO_PACKETS_PER_FRAME;
                        let packet = Packet {
                            header: video.clone(),
                            payload: timed_payload(descriptor, VIDEO_PAYLOAD_BYTES),
                        };
                        video.sequence_number = video.sequence_number.wrapping_add(1);
                        if let Ok(written) = camera.write_rtp(&packet).await {
                            if written > 0 {
                                tally.sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    video.timestamp = video.timestamp.wrapping_add((90_000 / VIDEO_FPS) as u32);
                }
                _ = audio_ticks.tick() => {
                    audio.marker = false;
                    let packet = Packet {
                        header: audio.clone(),
                        // Opus TOC byte: CELT fullband 20 ms, one frame.
                        payload: timed_payload(0xF8, AUDIO_PAYLOAD_BYTES),
                    };
                    audio.sequence_number = audio.sequence_number.wrapping_add(1);
                    if let Ok(written) = microphone.write_rtp(&packet).await {
                        if written > 0 {
                            tally.sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    audio.timestamp = audio.timestamp.wrapping_add((48_000 / AUDIO_PACKETS_PER_SECOND) as u32);
                }
            }
        }
    }

    fn timed_payload(first_byte: u8, size: usize) -> Bytes {
        let mut payload = vec![0x5A; size];
        payload[0] = first_byte;
        payload[1..9].copy_from_slice(&now_nanos().to_be_bytes());
        Bytes::from(payload)
    }
}
