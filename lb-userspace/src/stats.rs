//! The datapath's counters as a report: read from an instance's pinned maps, rendered as
//! text for people or JSON for tools.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use lb_common::stats::{self, Event, Reason};
use serde::Serialize;

use crate::{
    datapath::{self, DatapathError, RealMaps},
    model::BackendKey,
};

#[derive(Debug, Serialize)]
pub struct PacketCount {
    pub verdict: &'static str,
    pub reason: &'static str,
    pub packets: u64,
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub id: u32,
    pub frontends: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend: u64,
}

#[derive(Debug, Serialize)]
pub struct BackendReport {
    pub id: u32,
    pub address: String,
    pub new_flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// New connections it refused (RST to the SYN).
    pub conn_refused: u64,
    /// ICMP unreachable it sent about its flows.
    pub unreachable: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub packets: Vec<PacketCount>,
    pub events: BTreeMap<&'static str, u64>,
    pub services: Vec<ServiceReport>,
    pub backends: Vec<BackendReport>,
}

impl Report {
    /// Packets counted under a verdict and reason.
    pub fn packets(&self, verdict: &str, reason: &str) -> u64 {
        self.packets
            .iter()
            .filter(|p| p.verdict == verdict && p.reason == reason)
            .map(|p| p.packets)
            .sum()
    }
}

/// Reads the report of the instance pinned at `dir`.
pub fn read(dir: &Path) -> Result<Report, DatapathError> {
    datapath::require_instance(dir)?;
    let maps = RealMaps::from_pins(dir)?;
    let mut services: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut live = BTreeMap::new();
    for (key, value) in maps.frontends() {
        services
            .entry(value.service_id)
            .or_default()
            .push(key.to_string());
        live.insert(value.service_id, value);
    }
    let mut backends: BTreeMap<u32, String> = BTreeMap::new();
    for frontend in live.values() {
        if let Some(table) = maps.table(frontend) {
            for b in &table {
                if let std::collections::btree_map::Entry::Vacant(e) = backends.entry(*b)
                    && let Some(v) = maps.backend(*b)
                {
                    e.insert(BackendKey::of(&v).to_string());
                }
            }
        }
    }
    let service_ids: Vec<u32> = services.keys().copied().collect();
    let backend_ids: Vec<u32> = backends.keys().copied().collect();
    let counters = datapath::read_counters(dir, &service_ids, &backend_ids)?;

    let mut packets = Vec::new();
    for action in 0..stats::ACTIONS as u32 {
        for reason in Reason::ALL {
            let n = counters.global.packets(action, *reason);
            if n > 0 {
                packets.push(PacketCount {
                    verdict: stats::action_name(action),
                    reason: reason.label(),
                    packets: n,
                });
            }
        }
    }
    let events = Event::ALL
        .iter()
        .map(|(e, name)| (*name, counters.global.events[e.0 as usize]))
        .collect();
    let services = counters
        .services
        .iter()
        .map(|(id, s)| ServiceReport {
            id: *id,
            frontends: services[id].clone(),
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            no_backend: s.no_backend,
        })
        .collect();
    let backends = counters
        .backends
        .iter()
        .map(|(id, b)| BackendReport {
            id: *id,
            address: backends[id].clone(),
            new_flows: b.new_flows,
            packets: b.packets,
            bytes: b.bytes,
            reply_packets: b.reply_packets,
            reply_bytes: b.reply_bytes,
            conn_refused: b.conn_refused,
            unreachable: b.unreachable,
        })
        .collect();
    Ok(Report {
        packets,
        events,
        services,
        backends,
    })
}

/// The report as aligned text tables.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Packets by verdict and reason:");
    let _ = writeln!(out, "  {:<9} {:<22} {:>12}", "VERDICT", "REASON", "PACKETS");
    for p in &report.packets {
        let _ = writeln!(out, "  {:<9} {:<22} {:>12}", p.verdict, p.reason, p.packets);
    }
    let _ = writeln!(out, "Events:");
    for (name, n) in &report.events {
        let _ = writeln!(out, "  {name:<22} {n:>12}");
    }
    let _ = writeln!(out, "Services:");
    let _ = writeln!(
        out,
        "  {:>4} {:>10} {:>12} {:>10} {:>10}  FRONTENDS",
        "ID", "PACKETS", "BYTES", "NEW_FLOWS", "NO_BACKEND"
    );
    for s in &report.services {
        let _ = writeln!(
            out,
            "  {:>4} {:>10} {:>12} {:>10} {:>10}  {}",
            s.id,
            s.packets,
            s.bytes,
            s.new_flows,
            s.no_backend,
            s.frontends.join(" ")
        );
    }
    let _ = writeln!(out, "Backends:");
    let _ = writeln!(
        out,
        "  {:>4} {:<30} {:>10} {:>10} {:>10} {:>8} {:>11}",
        "ID", "ADDRESS", "NEW_FLOWS", "PACKETS", "REPLIES", "REFUSED", "UNREACHABLE"
    );
    for b in &report.backends {
        let _ = writeln!(
            out,
            "  {:>4} {:<30} {:>10} {:>10} {:>10} {:>8} {:>11}",
            b.id, b.address, b.new_flows, b.packets, b.reply_packets, b.conn_refused, b.unreachable
        );
    }
    out
}
