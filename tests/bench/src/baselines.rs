//! The baselines xlb is compared with, written the way kube-proxy writes them:
//! - iptables mode: KUBE-SERVICES -> one KUBE-SVC chain per service port, whose rules jump
//!   to one KUBE-SEP chain per endpoint with `statistic --mode random` probabilities 1/n,
//!   1/(n-1), ..., and a DNAT rule in each KUBE-SEP chain;
//! - nftables mode: a verdict map keyed by (VIP, protocol, port) -> one chain per service
//!   that picks an endpoint chain with `numgen random mod n`, each endpoint chain a DNAT.
//!
//! (Masquerade, firewall and NodePort chains are left out: they are the same work for
//! every mode compared here.)

use std::{fmt::Write as _, net::Ipv4Addr};

/// One service port with its endpoints (IPv4).
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub tcp: bool,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

fn chain_id(kind: &str, name: &str) -> String {
    // kube-proxy hashes the names into 16 base32 characters; a readable, unique stand-in.
    let h = lb_common::flow::murmur3(name.as_bytes(), 0x6b70);
    format!(
        "KUBE-{kind}-{h:08X}{:08X}",
        lb_common::flow::murmur3(name.as_bytes(), 0x7370)
    )
}

fn proto(s: &Service) -> &'static str {
    if s.tcp { "tcp" } else { "udp" }
}

/// The chains of one service (KUBE-SVC and its KUBE-SEP chains), declarations and rules.
fn iptables_service(s: &Service, decl: &mut String, rules: &mut String) {
    let svc = chain_id("SVC", &s.name);
    let _ = writeln!(decl, ":{svc} - [0:0]");
    let n = s.endpoints.len();
    for (i, (ip, port)) in s.endpoints.iter().enumerate() {
        let sep = chain_id("SEP", &format!("{}/{ip}:{port}", s.name));
        let _ = writeln!(decl, ":{sep} - [0:0]");
        let left = n - i;
        if left > 1 {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{} -> {ip}:{port}\" -m statistic --mode random --probability {:.11} -j {sep}",
                s.name,
                1.0 / left as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{} -> {ip}:{port}\" -j {sep}",
                s.name
            );
        }
        let p = proto(s);
        let _ = writeln!(
            rules,
            "-A {sep} -p {p} -m {p} -j DNAT --to-destination {ip}:{port}"
        );
    }
}

fn iptables_jump(s: &Service) -> String {
    let p = proto(s);
    format!(
        "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -d {}/32 -p {p} -m {p} --dport {} -j {}\n",
        s.name,
        s.vip,
        s.port,
        chain_id("SVC", &s.name)
    )
}

/// A full `iptables-restore` input for the nat table.
pub fn iptables_full(services: &[Service]) -> String {
    let mut decl = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for s in services {
        rules.push_str(&iptables_jump(s));
        iptables_service(s, &mut decl, &mut rules);
    }
    decl + &rules + "COMMIT\n"
}

/// What kube-proxy's partial sync writes (`iptables-restore --noflush`) when one
/// service's endpoints change: KUBE-SERVICES in full, plus the changed service's chains.
pub fn iptables_partial(
    services: &[Service],
    changed: &Service,
    removed_sep: Option<&(Ipv4Addr, u16)>,
) -> String {
    let mut decl = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::new();
    for s in services {
        rules.push_str(&iptables_jump(s));
    }
    iptables_service(changed, &mut decl, &mut rules);
    if let Some((ip, port)) = removed_sep {
        let sep = chain_id("SEP", &format!("{}/{ip}:{port}", changed.name));
        let _ = writeln!(decl, ":{sep} - [0:0]");
        let _ = writeln!(rules, "-X {sep}");
    }
    decl + &rules + "COMMIT\n"
}

fn nft_sep(s: &Service, ep: &(Ipv4Addr, u16)) -> String {
    chain_id("sep", &format!("{}/{}:{}", s.name, ep.0, ep.1)).to_lowercase()
}

/// The endpoint chain of `ep`.
fn nft_endpoint(s: &Service, ep: &(Ipv4Addr, u16), out: &mut String) {
    let sep = nft_sep(s, ep);
    let _ = writeln!(out, "add chain ip kube-proxy {sep}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {sep} meta l4proto {} dnat to {}:{}",
        proto(s),
        ep.0,
        ep.1
    );
}

/// The service chain's one rule: pick an endpoint chain at random.
fn nft_service_rule(s: &Service, out: &mut String) {
    let svc = chain_id("svc", &s.name).to_lowercase();
    let n = s.endpoints.len();
    if n > 0 {
        let vmap: Vec<String> = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", nft_sep(s, ep)))
            .collect();
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {svc} numgen random mod {n} vmap {{ {} }}",
            vmap.join(", ")
        );
    }
}

fn nft_service(s: &Service, out: &mut String) {
    for ep in &s.endpoints {
        nft_endpoint(s, ep, out);
    }
    let _ = writeln!(
        out,
        "add chain ip kube-proxy {}",
        chain_id("svc", &s.name).to_lowercase()
    );
    nft_service_rule(s, out);
}

fn nft_element(s: &Service) -> String {
    format!(
        "{} . {} . {} : goto {}",
        s.vip,
        proto(s),
        s.port,
        chain_id("svc", &s.name).to_lowercase()
    )
}

/// A full `nft -f` input: table, verdict map, prerouting chain, every service.
pub fn nft_full(services: &[Service]) -> String {
    let mut out = String::from(
        "add table ip kube-proxy\n\
         flush table ip kube-proxy\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; policy accept ; }\n\
         add rule ip kube-proxy nat-prerouting ip daddr . meta l4proto . th dport vmap @service-ips\n",
    );
    for s in services {
        nft_service(s, &mut out);
    }
    let elements: Vec<String> = services.iter().map(nft_element).collect();
    for chunk in elements.chunks(1000) {
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} }}",
            chunk.join(", ")
        );
    }
    out
}

/// What kube-proxy's nftables mode writes when one service's endpoints change: new
/// endpoint chains, the service chain flushed and rewritten, removed endpoint chains
/// deleted, in one transaction.
pub fn nft_partial(
    changed: &Service,
    added: Option<&(Ipv4Addr, u16)>,
    removed: Option<&(Ipv4Addr, u16)>,
) -> String {
    let mut out = String::new();
    if let Some(ep) = added {
        nft_endpoint(changed, ep, &mut out);
    }
    let _ = writeln!(
        out,
        "flush chain ip kube-proxy {}",
        chain_id("svc", &changed.name).to_lowercase()
    );
    nft_service_rule(changed, &mut out);
    if let Some(ep) = removed {
        let _ = writeln!(out, "delete chain ip kube-proxy {}", nft_sep(changed, ep));
    }
    out
}
