//! Command-line interface of the `xlb` binary. The doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lb_common::{config::DatapathConfig, maps::CONNTRACK_ENTRIES};

use crate::{datapath::AttachMode, health::MethodKind};

/// `xlb --version`: the release, the commit it was built from, and the target.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("XLB_GIT_COMMIT"),
    ", ",
    env!("XLB_TARGET"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "xlb",
    version = VERSION,
    about = "xlb: an XDP load balancer for Kubernetes Services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing-subscriber syntax, such as `info` or `xlb=debug`). Default:
    /// $XLB_LOG, else $RUST_LOG, else `info`.
    #[arg(long, global = true, env = "XLB_LOG")]
    pub log: Option<String>,
    /// Log lines as text, or as JSON objects (one per line, for log collectors).
    #[arg(
        long,
        global = true,
        env = "XLB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The log filter: `--log`, $XLB_LOG, $RUST_LOG, then `info`.
    pub fn log_filter(&self) -> String {
        self.log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "info".into())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the datapath, attach it to interfaces and keep its maps in sync with the
    /// Services and EndpointSlices of a manifests directory or the Kubernetes API.
    Agent(AgentArgs),
    /// Print the datapath counters of a running agent (read from its pinned maps).
    Stats(StatsArgs),
    /// Detach the datapath an agent left serving and remove its pins (stop the agent
    /// first). This drops the connection table: established connections through the
    /// node break.
    Cleanup(CleanupArgs),
    /// Mount a bpf filesystem at a path unless one is mounted there already (the
    /// DaemonSet's init container runs this, so that the agent itself needs no mount
    /// privilege).
    MountBpffs(MountBpffsArgs),
    /// Print a shell completion script (e.g. `xlb completions bash >
    /// /etc/bash_completion.d/xlb`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct MountBpffsArgs {
    /// Where the bpf filesystem must be (created if missing).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The agent's pin directory.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/xlb")]
    pub bpffs: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifests", "kubernetes"])))]
pub struct AgentArgs {
    /// Read Services, EndpointSlices and Nodes from a directory of Kubernetes manifests
    /// (*.yaml, *.yml, *.json), reloaded when its files change (SIGHUP also reloads).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Watch Services, EndpointSlices and this node's Node through the Kubernetes API.
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig for --kubernetes (default: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's address, e.g. https://10.0.0.1:6443, instead of the one the
    /// configuration names. On a node without kube-proxy the in-cluster default (the
    /// `kubernetes` Service's ClusterIP) needs this agent first: give the real address
    /// here, or in $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT.
    #[arg(long, value_name = "URL", requires = "kubernetes")]
    pub api_server: Option<http::Uri>,
    /// This node's name: its Node object gives the NodePort addresses and the zone, and
    /// endpoints with this nodeName are local. Default: $NODE_NAME, else (manifests
    /// only) the host name.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Address NodePorts are served on when this node has no Node object (or it lists
    /// none); repeatable.
    #[arg(long = "node-address", value_name = "IP")]
    pub node_addresses: Vec<std::net::IpAddr>,
    /// Which node addresses serve NodePorts, as kube-proxy's flag of the same name:
    /// `primary` (the node's first InternalIP of each family, else its first ExternalIP),
    /// or CIDRs (comma-separated or repeated) that select among the Node's InternalIP and
    /// ExternalIP addresses (or --node-address). Default: all of them.
    #[arg(long = "nodeport-addresses", value_name = "ADDRS")]
    pub nodeport_addresses: Vec<String>,
    /// Serve only the Services labelled `service.kubernetes.io/service-proxy-name=NAME`
    /// (kube-proxy ignores every Service with that label), to share a cluster with
    /// kube-proxy. Default: the Services without the label, as kube-proxy serves.
    #[arg(long, value_name = "NAME")]
    pub service_proxy_name: Option<String>,
    /// This node's zone (for topology hints) when its Node object has no zone label.
    #[arg(long, value_name = "ZONE")]
    pub node_zone: Option<String>,
    /// Node device to attach the XDP program to (repeatable): exactly these, attached when
    /// they appear. Without it the agent finds the node's devices itself: the ones that
    /// carry this node's addresses or the default routes, followed as they come and go.
    #[arg(long = "interface", short = 'i', value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Leave pods' interfaces alone (by default each local pod's host-side veth gets the
    /// tc program, for its replies to external clients).
    #[arg(long)]
    pub no_pod_interfaces: bool,
    /// The cgroup (v2) whose sockets are translated at connect/sendmsg time: the root of
    /// the hierarchy covers every process and pod of the node. Default: where cgroup2 is
    /// mounted.
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Do not translate at the socket (then only traffic arriving on node devices is).
    #[arg(long)]
    pub no_socket_lb: bool,
    /// Per-instance directory on a bpffs where the maps are pinned.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/xlb")]
    pub bpffs: PathBuf,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpModeArg,
    /// Address of the HTTP endpoint with /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,
    /// A second address serving only /healthz and /readyz, for probes and load balancers
    /// that must reach the node (as kube-proxy serves its health on 0.0.0.0:10256 and its
    /// metrics on localhost).
    #[arg(long, value_name = "ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// On exit, detach from every interface and remove the pins. By default the
    /// datapath keeps serving after the agent exits (its links and maps are pinned), and
    /// the next agent takes it over without dropping a packet or a connection.
    #[arg(long)]
    pub cleanup_on_exit: bool,
    #[command(flatten)]
    pub datapath: DatapathArgs,
    #[command(flatten)]
    pub health: HealthArgs,
}

/// A duration flag: Kubernetes' syntax (`500ms`, `1m30s`, `24h`), more than zero.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    match crate::health::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("{text:?} must be more than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A health check's interval or timeout flag: at least 10 ms.
fn check_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::health::parse_check_duration(text).map_err(|e| e.to_string())
}

/// A duration flag in whole seconds (the datapath's timeouts): `86400`, `24h`, `90s`.
fn seconds(text: &str) -> Result<u32, String> {
    let d = duration(text)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{text:?}: whole seconds only"));
    }
    u32::try_from(d.as_secs()).map_err(|_| format!("{text:?} is too long"))
}

/// `--xdp-mode` (the datapath's [`AttachMode`], named for the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native mode, falling back to generic mode with a warning.
    Auto,
    Native,
    Generic,
}

impl From<XdpModeArg> for AttachMode {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Auto => Self::Auto,
            XdpModeArg::Native => Self::Native,
            XdpModeArg::Generic => Self::Generic,
        }
    }
}

/// `--health-check` (the health spec's [`MethodKind`], named for the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckMethodArg {
    Tcp,
    Http,
}

impl From<CheckMethodArg> for MethodKind {
    fn from(m: CheckMethodArg) -> Self {
        match m {
            CheckMethodArg::Tcp => Self::Tcp,
            CheckMethodArg::Http => Self::Http,
        }
    }
}

/// Health checks, passive ejection and draining. Services override the check settings
/// with `xlb.dev/health-check*` annotations.
#[derive(Debug, Args, Clone)]
pub struct HealthArgs {
    /// Active check for Services without an `xlb.dev/health-check` annotation: tcp
    /// (connect) or http (GET); none when not given. UDP ports are checked only with an
    /// `xlb.dev/health-check-port` annotation.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub health_check: Option<CheckMethodArg>,
    /// Default path of http checks.
    #[arg(long, default_value = "/")]
    pub health_check_path: String,
    /// Default healthy status range of http checks.
    #[arg(long, default_value = "200-399")]
    pub health_check_status: String,
    /// Default interval between two checks of a backend (e.g. 500ms, 2s, 1m30s).
    #[arg(long, value_parser = check_duration, default_value = "2s")]
    pub health_check_interval: std::time::Duration,
    /// Default time a check may take.
    #[arg(long, value_parser = check_duration, default_value = "1s")]
    pub health_check_timeout: std::time::Duration,
    /// Consecutive successes that bring an unhealthy backend back.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub healthy_threshold: u32,
    /// Consecutive failures that take a backend out.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub unhealthy_threshold: u32,
    /// Failed new connections (TCP RST answering the SYN, ICMP unreachable from the
    /// backend) within --outlier-window that eject a backend at once; 0: off.
    #[arg(long, default_value_t = 3)]
    pub outlier_failures: u32,
    /// The window --outlier-failures are counted in.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub outlier_window: std::time::Duration,
    /// How long a passive ejection lasts for backends without an active check (with one,
    /// the check brings them back).
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub outlier_ejection: std::time::Duration,
    /// How long TCP connections to a backend that left its Service (terminating or
    /// deleted endpoint) keep going before their entries are removed. UDP flows of a
    /// removed backend move to another backend at once.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub drain_timeout: std::time::Duration,
}

impl HealthArgs {
    /// The health view's settings; a bad default status range is an error.
    pub fn view(&self) -> anyhow::Result<crate::health::HealthView> {
        let status = crate::health::parse_status(&self.health_check_status)
            .map_err(|e| anyhow::anyhow!("--health-check-status: {e}"))?;
        if !self.health_check_path.starts_with('/') {
            anyhow::bail!(
                "--health-check-path {:?}: not an absolute path",
                self.health_check_path
            );
        }
        Ok(crate::health::HealthView::new(
            crate::health::HealthDefaults {
                method: self.health_check.map(MethodKind::from),
                path: self.health_check_path.clone(),
                status,
                interval: self.health_check_interval,
                timeout: self.health_check_timeout.min(self.health_check_interval),
                healthy_threshold: self.healthy_threshold,
                unhealthy_threshold: self.unhealthy_threshold,
            },
            crate::health::OutlierConfig {
                failures: self.outlier_failures,
                window: self.outlier_window,
                ejection: self.outlier_ejection,
            },
        ))
    }
}

/// Settings of the datapath, fixed when the program is loaded.
#[derive(Debug, Args, Clone)]
pub struct DatapathArgs {
    /// Connection-table capacity (flows x 2 entries; LRU eviction beyond it).
    #[arg(long, default_value_t = CONNTRACK_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..))]
    pub conntrack_entries: u32,
    /// Capacity of the backend table: every endpoint address and port this node may send
    /// to. Its per-backend counters are per CPU, 64 bytes x this x the node's CPUs (the
    /// default takes 16 MiB per CPU, 1 GiB on a 64-CPU node): size it to the cluster.
    #[arg(long, default_value_t = lb_common::maps::MAX_BACKENDS, value_parser = clap::value_parser!(u32).range(16..=i64::from(lb_common::maps::MAX_BACKENDS)))]
    pub max_backends: u32,
    /// Idle timeout of an established TCP flow (seconds, or a duration such as 24h).
    #[arg(long, default_value_t = DatapathConfig::DEFAULT.ct_tcp_established_timeout_s, value_parser = seconds)]
    pub ct_tcp_timeout: u32,
    /// Idle timeout of a TCP flow that has only sent a SYN (seconds, or a duration).
    #[arg(long, default_value_t = DatapathConfig::DEFAULT.ct_tcp_syn_timeout_s, value_parser = seconds)]
    pub ct_tcp_syn_timeout: u32,
    /// Idle timeout of a TCP flow after FIN or RST (seconds, or a duration).
    #[arg(long, default_value_t = DatapathConfig::DEFAULT.ct_tcp_closing_timeout_s, value_parser = seconds)]
    pub ct_tcp_closing_timeout: u32,
    /// Idle timeout of a UDP flow (seconds, or a duration).
    #[arg(long, default_value_t = DatapathConfig::DEFAULT.ct_udp_timeout_s, value_parser = seconds)]
    pub ct_udp_timeout: u32,
    /// Upper bound of a service's Maglev table size (tables hold at least 100 slots per
    /// backend up to this bound; it is rounded down to a prime).
    #[arg(long, default_value_t = 65_537, value_parser = clap::value_parser!(u32).range(101..=lb_common::maps::MAX_TABLE_SIZE as i64))]
    pub max_table_size: u32,
}

impl DatapathArgs {
    pub fn config(&self) -> DatapathConfig {
        DatapathConfig {
            ct_tcp_syn_timeout_s: self.ct_tcp_syn_timeout,
            ct_tcp_established_timeout_s: self.ct_tcp_timeout,
            ct_tcp_closing_timeout_s: self.ct_tcp_closing_timeout,
            ct_udp_timeout_s: self.ct_udp_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The agent's pin directory.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/xlb")]
    pub bpffs: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}
