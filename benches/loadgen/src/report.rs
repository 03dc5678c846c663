//! Output: one JSON object per line on stdout for every step, tick and result, and a readable
//! table of the final result on stderr.
//!
//! Stdout stays machine-readable (nothing else is ever printed there), so a run can be piped
//! into `jq` or kept as a log; the table is for the person watching. Knows nothing about what
//! the scenarios measure: it only stamps and prints the objects it is given.

use std::io::Write;
use std::time::Instant;

use serde_json::{Map, Value};

/// Stamps every line with the scenario name, the kind of line and the seconds since start.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    scenario: &'static str,
    started: Instant,
    table: bool,
}

impl Reporter {
    pub fn new(scenario: &'static str, table: bool) -> Self {
        Self {
            scenario,
            started: Instant::now(),
            table,
        }
    }

    /// A phase of the scenario finished (connected, subscribed, published, ...).
    pub fn step(&self, step: &str, fields: Value) {
        let mut line = self.header("step");
        line.insert("step".into(), Value::from(step));
        self.emit(line, fields);
    }

    /// A periodic progress sample during a run.
    pub fn tick(&self, fields: Value) {
        let line = self.header("tick");
        self.emit(line, fields);
    }

    /// The scenario's result; also printed as a table on stderr unless disabled.
    pub fn result(&self, fields: Value) {
        if self.table {
            eprint!("{}", render_table(self.scenario, &fields));
        }
        let line = self.header("result");
        self.emit(line, fields);
    }

    fn header(&self, event: &str) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("event".into(), Value::from(event));
        line.insert("scenario".into(), Value::from(self.scenario));
        line.insert(
            "t_s".into(),
            Value::from(round3(self.started.elapsed().as_secs_f64())),
        );
        line
    }

    fn emit(&self, mut line: Map<String, Value>, fields: Value) {
        match fields {
            Value::Object(map) => line.extend(map),
            Value::Null => {}
            other => {
                line.insert("value".into(), other);
            }
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) must not abort a run that is holding a hub's
        // connections: the output is lost either way, so the error is dropped.
        let _ = writeln!(out, "{}", Value::Object(line));
        let _ = out.flush();
    }
}

/// Rounds to 3 decimals so that lines stay short and tables aligned.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Two columns, `key.sub.key  value`. Keys come sorted: serde_json's map is ordered by key
/// unless its `preserve_order` feature is on, and turning that on here would change the hub's
/// own serde_json whenever the workspace is built as a whole (features unify).
fn render_table(scenario: &str, fields: &Value) -> String {
    let mut rows = Vec::new();
    flatten("", fields, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("\n== hub-loadgen {scenario} ==\n");
    for (key, value) in rows {
        out.push_str(&format!("  {key:<width$}  {value}\n"));
    }
    out
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_flattens_nested_objects() {
        let t = render_table("x", &json!({"b": 1, "a": {"z": "s", "y": [1, 2]}}));
        let lines: Vec<&str> = t.lines().skip(2).map(str::trim).collect();
        assert_eq!(lines, ["a.y  [1,2]", "a.z  s", "b    1"]);
    }
}
