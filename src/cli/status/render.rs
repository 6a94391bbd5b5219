//! How `fleet status` shows its rows: the table (comfy-table, plain text, snapshot-tested) and
//! the `--json` document (`docs/status-json.md`).

use std::fmt::Write;

use crate::operate::instance_label;
use crate::operate::status::{
    Presence, StatusDoc, StatusFault, StatusRow, WorkerRow, Workers, compact_bytes,
    compact_duration,
};

/// The table `fleet status` prints: one line per row, then one line per fault. Plain text
/// (no colour, no terminal width): the same rows always render the same.
pub fn table(rows: &[StatusRow], faults: &[StatusFault]) -> String {
    use comfy_table::{CellAlignment, ContentArrangement, Table, presets};
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(vec![
            "app",
            "#",
            "host",
            "container",
            "version",
            "status",
            "health",
            "↺",
            "uptime",
            "cpu",
            "mem",
        ]);
    let dash = || "-".to_string();
    for r in rows {
        let version = match (&r.version, &r.desired_version) {
            (Some(v), Some(w)) if v != w => format!("{v} (wants {w})"),
            (Some(v), _) => v.clone(),
            (None, Some(w)) => format!("({w})"),
            (None, None) => dash(),
        };
        let mut status = r.state.clone();
        if let Some(code) = r.exit_code {
            let _ = write!(status, " ({code})");
        }
        if r.presence == Presence::Unwanted {
            status.push_str(", not in manifest");
        }
        let mem = match (r.memory_bytes, r.memory_limit_bytes) {
            (Some(m), _) => compact_bytes(m),
            _ => dash(),
        };
        t.add_row(vec![
            r.app.clone(),
            r.instance.map_or_else(|| "?".into(), |n| n.to_string()),
            r.host.clone(),
            r.container_id.clone().unwrap_or_else(dash),
            version,
            status,
            r.health.clone(),
            r.restarts.map_or_else(dash, |n| n.to_string()),
            r.uptime_secs.map_or_else(dash, compact_duration),
            r.cpu_percent.map_or_else(dash, |c| format!("{c:.1}%")),
            mem,
        ]);
        // pm2's workers under their container, as `pm2 list` shows them: id and name, pid,
        // status, restarts, uptime, CPU, memory.
        let workers: &[WorkerRow] = match &r.workers {
            Workers::Listed(w) => w,
            _ => &[],
        };
        for (i, w) in workers.iter().enumerate() {
            let branch = if i + 1 == workers.len() { '└' } else { '├' };
            t.add_row(vec![
                format!("{branch} {} {}", w.pm_id, w.name),
                String::new(),
                String::new(),
                w.pid.map_or_else(dash, |p| format!("pid {p}")),
                String::new(),
                w.status.clone(),
                String::new(),
                w.restarts.to_string(),
                w.uptime_s.map_or_else(dash, compact_duration),
                w.cpu.map_or_else(dash, |c| format!("{c:.1}%")),
                w.memory.map_or_else(dash, compact_bytes),
            ]);
        }
        if r.workers == Workers::Unknown {
            let mut cells = vec![String::new(); 11];
            cells[0] = "└ pm2".into();
            cells[5] = "unknown (see below)".into();
            t.add_row(cells);
        }
    }
    for i in [1, 7, 8, 9, 10] {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut s = t.trim_fmt();
    s.push('\n');
    if rows.is_empty() {
        s.push_str("no instances\n");
    }
    for r in rows {
        if let Some(e) = &r.workers_error {
            let _ = writeln!(
                s,
                "{}: pm2 workers unknown: {e}",
                instance_label(&r.app, r.instance, &r.host)
            );
        }
    }
    for f in faults {
        let what = if f.scope == "consul" {
            "Consul agent unreadable"
        } else {
            "host unreadable"
        };
        let _ = writeln!(s, "{} ({}): {what}: {}", f.host, f.address, f.message);
    }
    s
}

/// `fleet status --json`: the document, pretty-printed, with a final newline.
pub fn json(doc: &StatusDoc) -> serde_json::Result<String> {
    Ok(serde_json::to_string_pretty(doc)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operate::Selector;
    use crate::operate::status::fixtures::{busy, busy_with_pm2};
    use crate::operate::status::{JSON_FORMAT_VERSION, faults, rows};

    #[test]
    fn pm2_workers_under_their_container() {
        let (d, r) = busy_with_pm2();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        insta::assert_snapshot!(table(&rows, &faults(&r)));
    }

    /// `workers` is left out for a container without pm2, `null` with `workers_error` when the
    /// read failed, the list otherwise; each parses back.
    #[test]
    fn workers_in_the_json_are_absent_null_or_a_list() {
        let (d, r) = busy_with_pm2();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let doc = StatusDoc::new(&d, &r, rows, 1_100);
        let v = serde_json::to_value(&doc).unwrap();
        let row = |app: &str, state: &str| {
            v["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["app"] == app && x["state"] == state)
                .unwrap()
                .as_object()
                .unwrap()
                .clone()
        };
        let web1 = row("web", "running");
        assert_eq!(web1["workers"].as_array().unwrap().len(), 3);
        assert!(!web1.contains_key("workers_error"));
        insta::assert_json_snapshot!(web1["workers"][1]);
        let plain = row("web", "restarting");
        assert!(!plain.contains_key("workers") && !plain.contains_key("workers_error"));
        let legacy = row("legacy", "running");
        assert!(legacy["workers"].is_null(), "{legacy:?}");
        assert!(legacy["workers_error"].is_string());
        let back: StatusDoc = serde_json::from_value(v).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn table_snapshot() {
        let (d, r) = busy();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        insta::assert_snapshot!(table(&rows, &faults(&r)));
    }

    #[test]
    fn json_round_trips_into_the_documented_types() {
        let (d, r) = busy();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let doc = StatusDoc::new(&d, &r, rows, 1_100);
        let text = json(&doc).unwrap();
        let back: StatusDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in [
            "format_version",
            "project",
            "environment",
            "observed_at",
            "instances",
            "faults",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        insta::assert_json_snapshot!(v["instances"][0]);
    }

    /// The example in docs/status-json.md is a valid document, and every field of a row the
    /// code writes is in the documented table.
    #[test]
    fn the_documented_example_parses_and_every_field_is_documented() {
        let doc = include_str!("../../../docs/status-json.md");
        let start = doc.find("```json\n").expect("an example") + 8;
        let end = start + doc[start..].find("```").unwrap();
        let parsed: StatusDoc = serde_json::from_str(&doc[start..end]).expect("example parses");
        assert_eq!(parsed.format_version, JSON_FORMAT_VERSION);
        let (d, r) = busy_with_pm2();
        let rows = rows(&d, &r, &Selector::default(), 1_100);
        let v = serde_json::to_value(StatusDoc::new(&d, &r, rows, 1)).unwrap();
        let mut fields: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        for row in v["instances"].as_array().unwrap() {
            fields.extend(row.as_object().unwrap().keys().cloned());
        }
        fields.extend(
            v["instances"][0]["workers"][0]
                .as_object()
                .unwrap()
                .keys()
                .cloned(),
        );
        fields.extend(v["faults"][0].as_object().unwrap().keys().cloned());
        for f in fields {
            assert!(doc.contains(&format!("| `{f}`")), "{f} is not documented");
        }
    }
}
