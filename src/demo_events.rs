//! `realtime-hub demo-events`: a producer that appends a realistic flow of domain events to a
//! Redis Stream (by default `hub:events`), the way a service would, so that a hub reading that
//! stream has something live to show: orders being created, paid and shipped on
//! `dashboard:orders`, and sensor readings on `dashboard:sensors`.
//!
//! Every entry carries `channel`, `event_type`, `event_id` (the idempotency key) and `data`: a
//! domain-event envelope `{"event_id","event_type","aggregate_id","occurred_at",...}` with the
//! same `event_id`. It knows nothing about the hub beyond that entry format (docs/events.md "The entry").

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::clock::{unix_millis, Rfc3339Millis};
use crate::config::DemoEventsArgs;

/// The channel of order events.
pub const ORDERS: &str = "dashboard:orders";
/// The channel of sensor readings.
pub const SENSORS: &str = "dashboard:sensors";

/// Most entries appended in one round trip.
const MAX_PIPELINE: u64 = 1000;
/// Longest sleep between two checks of the clock (and of Ctrl-C).
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How often progress is printed.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Orders open at once before the producer only advances existing ones.
const MAX_OPEN_ORDERS: usize = 50;

pub fn run(args: DemoEventsArgs) -> ExitCode {
    let Some(url) = args.redis_url.clone().filter(|u| !u.is_empty()) else {
        eprintln!("realtime-hub demo-events: no Redis: pass --redis-url or set HUB_REDIS_URL");
        return ExitCode::from(2);
    };
    if !(args.rate.is_finite() && args.rate > 0.0) {
        eprintln!("realtime-hub demo-events: --rate must be a number above 0");
        return ExitCode::from(2);
    }
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-hub demo-events: HUB_REDIS_URL: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("realtime-hub demo-events: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(produce(client, args))
}

async fn produce(client: redis::Client, args: DemoEventsArgs) -> ExitCode {
    let mut conn = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-hub demo-events: cannot reach Redis: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "demo-events: appending about {} events/s to `{}` for {ORDERS} and {SENSORS}; Ctrl-C stops",
        args.rate, args.stream
    );
    let mut world = World::new();
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|s| started + Duration::from_secs_f64(s.max(0.0)));
    let mut sent: u64 = 0;
    let mut next_report = started + REPORT_EVERY;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        // One event at the start, then one every 1/rate seconds.
        let target = (now.duration_since(started).as_secs_f64() * args.rate) as u64 + 1;
        let due = target.saturating_sub(sent).min(MAX_PIPELINE);
        if due > 0 {
            let mut pipe = redis::pipe();
            for _ in 0..due {
                let event = world.next_event();
                let xadd = pipe.cmd("XADD").arg(&args.stream);
                if args.maxlen > 0 {
                    xadd.arg("MAXLEN").arg("~").arg(args.maxlen);
                }
                xadd.arg("*")
                    .arg("channel")
                    .arg(event.channel)
                    .arg("event_type")
                    .arg(event.event_type)
                    .arg("event_id")
                    .arg(&event.event_id)
                    .arg("data")
                    .arg(envelope_text(&event.data))
                    .ignore();
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => sent += due,
                Err(e) => {
                    eprintln!("demo-events: appending failed, retrying in 1 s: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if Instant::now() >= next_report {
            println!("demo-events: {sent} events appended");
            next_report += REPORT_EVERY;
        }
        let next_due = started + Duration::from_secs_f64(sent as f64 / args.rate);
        let mut wake = next_due.min(Instant::now() + MAX_SLEEP);
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = &mut ctrl_c => break,
        }
    }
    println!("demo-events: {sent} events appended to `{}`", args.stream);
    ExitCode::SUCCESS
}

/// One event, ready to append.
struct Event {
    channel: &'static str,
    event_type: &'static str,
    event_id: String,
    data: Value,
}

/// A small, fast, seeded generator (xorshift64*): the events need variety, not secrecy.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Rng(u64::from_le_bytes(seed) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const CUSTOMERS: [(&str, &str); 8] = [
    ("cus-1001", "Ada Lovelace"),
    ("cus-1002", "Grace Hopper"),
    ("cus-1003", "Alan Turing"),
    ("cus-1004", "Katherine Johnson"),
    ("cus-1005", "Edsger Dijkstra"),
    ("cus-1006", "Barbara Liskov"),
    ("cus-1007", "Margaret Hamilton"),
    ("cus-1008", "Donald Knuth"),
];
const CARRIERS: [&str; 4] = ["DHL", "UPS", "FedEx", "PostNL"];
const PAYMENT_METHODS: [&str; 3] = ["card", "paypal", "bank_transfer"];
/// Sensor locations with their usual temperature (°C) and humidity (%).
const SITES: [(&str, f64, f64); 6] = [
    ("cold-room-a", 4.0, 85.0),
    ("cold-room-b", 3.5, 88.0),
    ("warehouse-1", 17.0, 55.0),
    ("warehouse-2", 18.5, 50.0),
    ("office", 21.5, 42.0),
    ("server-room", 24.0, 35.0),
];

enum Stage {
    Created,
    Paid,
}

struct Order {
    id: String,
    customer: (&'static str, &'static str),
    amount: f64,
    items: u64,
    stage: Stage,
}

struct Sensor {
    id: String,
    site: &'static str,
    temperature_c: f64,
    humidity_pct: f64,
}

/// The state behind the events: open orders move from created to paid to shipped; sensors
/// drift around their site's usual readings.
struct World {
    rng: Rng,
    next_order: u64,
    open: Vec<Order>,
    sensors: Vec<Sensor>,
}

fn one_decimal(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl World {
    fn new() -> Self {
        let mut rng = Rng::seeded();
        let next_order = 100_000 + rng.below(800_000);
        let sensors = SITES
            .iter()
            .enumerate()
            .map(|(i, (site, t, h))| Sensor {
                id: format!("sensor-{}", i + 1),
                site,
                temperature_c: *t,
                humidity_pct: *h,
            })
            .collect();
        World {
            rng,
            next_order,
            open: Vec::new(),
            sensors,
        }
    }

    fn next_event(&mut self) -> Event {
        if self.rng.unit() < 0.5 {
            self.sensor_reading()
        } else {
            self.order_event()
        }
    }

    fn envelope(event_type: &str, aggregate_id: &str) -> (String, serde_json::Map<String, Value>) {
        let event_id = uuid::Uuid::new_v4().to_string();
        let mut data = serde_json::Map::new();
        data.insert("event_id".into(), json!(event_id));
        data.insert("event_type".into(), json!(event_type));
        data.insert("aggregate_id".into(), json!(aggregate_id));
        data.insert(
            "occurred_at".into(),
            json!(Rfc3339Millis(unix_millis()).to_string()),
        );
        (event_id, data)
    }

    fn sensor_reading(&mut self) -> Event {
        let i = self.rng.below(self.sensors.len() as u64) as usize;
        let (base_t, base_h) = (SITES[i].1, SITES[i].2);
        let drift_t =
            (self.rng.unit() - 0.5) * 0.6 + (base_t - self.sensors[i].temperature_c) * 0.1;
        let drift_h = (self.rng.unit() - 0.5) * 1.5 + (base_h - self.sensors[i].humidity_pct) * 0.1;
        let sensor = &mut self.sensors[i];
        sensor.temperature_c += drift_t;
        sensor.humidity_pct = (sensor.humidity_pct + drift_h).clamp(0.0, 100.0);
        let (event_id, mut data) = Self::envelope("sensor.reading", &sensor.id);
        data.insert("sensor_id".into(), json!(sensor.id));
        data.insert("location".into(), json!(sensor.site));
        data.insert(
            "temperature_c".into(),
            json!(one_decimal(sensor.temperature_c)),
        );
        data.insert(
            "humidity_pct".into(),
            json!(one_decimal(sensor.humidity_pct)),
        );
        Event {
            channel: SENSORS,
            event_type: "sensor.reading",
            event_id,
            data: Value::Object(data),
        }
    }

    fn order_event(&mut self) -> Event {
        let create =
            self.open.len() < 3 || (self.open.len() < MAX_OPEN_ORDERS && self.rng.unit() < 0.4);
        if create {
            return self.order_created();
        }
        let i = self.rng.below(self.open.len() as u64) as usize;
        match self.open[i].stage {
            Stage::Created => {
                self.open[i].stage = Stage::Paid;
                let method = *self.rng.pick(&PAYMENT_METHODS);
                let order = &self.open[i];
                let (event_id, mut data) = Self::envelope("order.paid", &order.id);
                data.insert("order_id".into(), json!(order.id));
                data.insert("customer_id".into(), json!(order.customer.0));
                data.insert("amount".into(), json!(order.amount));
                data.insert("currency".into(), json!("EUR"));
                data.insert("payment_method".into(), json!(method));
                Event {
                    channel: ORDERS,
                    event_type: "order.paid",
                    event_id,
                    data: Value::Object(data),
                }
            }
            Stage::Paid => {
                let order = self.open.swap_remove(i);
                let carrier = *self.rng.pick(&CARRIERS);
                let tracking = format!(
                    "{}{:010}",
                    &carrier[..2].to_uppercase(),
                    self.rng.below(10_000_000_000)
                );
                let (event_id, mut data) = Self::envelope("order.shipped", &order.id);
                data.insert("order_id".into(), json!(order.id));
                data.insert("customer_id".into(), json!(order.customer.0));
                data.insert("carrier".into(), json!(carrier));
                data.insert("tracking_number".into(), json!(tracking));
                Event {
                    channel: ORDERS,
                    event_type: "order.shipped",
                    event_id,
                    data: Value::Object(data),
                }
            }
        }
    }

    fn order_created(&mut self) -> Event {
        self.next_order += 1;
        let customer = *self.rng.pick(&CUSTOMERS);
        let items = 1 + self.rng.below(5);
        let cents = items * (500 + self.rng.below(9_500));
        let order = Order {
            id: format!("ord-{}", self.next_order),
            customer,
            amount: cents as f64 / 100.0,
            items,
            stage: Stage::Created,
        };
        let (event_id, mut data) = Self::envelope("order.created", &order.id);
        data.insert("order_id".into(), json!(order.id));
        data.insert(
            "customer".into(),
            json!({"id": order.customer.0, "name": order.customer.1}),
        );
        data.insert("items".into(), json!(order.items));
        data.insert("amount".into(), json!(order.amount));
        data.insert("currency".into(), json!("EUR"));
        self.open.push(order);
        Event {
            channel: ORDERS,
            event_type: "order.created",
            event_id,
            data: Value::Object(data),
        }
    }
}

/// The envelope's JSON text with its four envelope fields first, as a service would write it
/// (`serde_json` maps keep their keys sorted).
fn envelope_text(data: &Value) -> String {
    const HEAD: [&str; 4] = ["event_id", "event_type", "aggregate_id", "occurred_at"];
    let Value::Object(map) = data else {
        return data.to_string();
    };
    let head = HEAD.iter().filter_map(|k| map.get(*k).map(|v| (*k, v)));
    let rest = map
        .iter()
        .filter(|(k, _)| !HEAD.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v));
    let fields: Vec<String> = head
        .chain(rest)
        .map(|(k, v)| format!("{}:{v}", Value::from(k)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_start_with_their_envelope_fields() {
        let data = json!({"amount": 1.5, "event_id": "e", "aggregate_id": "a", "event_type": "t",
                          "occurred_at": "o", "currency": "EUR"});
        let text = envelope_text(&data);
        assert!(
            text.starts_with(
                r#"{"event_id":"e","event_type":"t","aggregate_id":"a","occurred_at":"o","#
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(data));
    }

    #[test]
    fn events_are_domain_envelopes_with_their_entry_event_id() {
        let mut world = World::new();
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let e = world.next_event();
            assert_eq!(e.data["event_id"], json!(e.event_id));
            assert_eq!(e.data["event_type"], json!(e.event_type));
            assert!(e.data["aggregate_id"].is_string());
            assert!(e.data["occurred_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')));
            assert!(e.channel == ORDERS || e.channel == SENSORS);
            kinds.insert(e.event_type);
        }
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [
                "order.created",
                "order.paid",
                "order.shipped",
                "sensor.reading"
            ]
        );
    }
}
