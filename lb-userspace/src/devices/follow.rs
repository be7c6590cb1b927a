//! Keeps the programs attached where they belong as devices come and go: XDP on every
//! node device (and its entry in the datapath's redirect targets), tc on every pod's
//! interface. Each pass lists the devices, classifies them and attaches or detaches the
//! difference; a device that cannot be attached is reported and retried at the next
//! pass, never fatal (a pod that went must not stop the agent).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use rtnetlink::Handle;

use super::{Device, Roles, classify, netlink, peer};
use crate::datapath::{AttachMode, Attachment, Datapath, Hook, TxPorts};

/// What the follower was told to do.
#[derive(Clone, Debug)]
pub struct FollowConfig {
    /// `--interface`: exactly these node devices (when present); otherwise detection.
    pub pinned: Option<Vec<String>>,
    pub mode: AttachMode,
    /// Attach the tc program to pods' interfaces.
    pub pods: bool,
}

/// The devices the programs are attached to.
pub struct Follower {
    cfg: FollowConfig,
    handle: Handle,
    tx: TxPorts,
    node_addresses: Vec<IpAddr>,
    roles: Roles,
    /// `TX_F_*` of each node device, by interface index (a veth's peer is inspected once).
    flags: BTreeMap<u32, u32>,
    first: bool,
}

impl Follower {
    /// Within the async runtime (the netlink connection runs on it).
    pub fn new(cfg: FollowConfig, tx: TxPorts) -> Result<Self, netlink::NetlinkError> {
        Ok(Self {
            cfg,
            handle: netlink::connect()?,
            tx,
            node_addresses: Vec::new(),
            roles: Roles::default(),
            flags: BTreeMap::new(),
            first: true,
        })
    }

    /// The node's addresses changed (its Node object): they decide node devices too.
    pub fn set_node_addresses(&mut self, addresses: Vec<IpAddr>) -> bool {
        let changed = addresses != self.node_addresses;
        self.node_addresses = addresses;
        changed
    }

    /// What the programs are attached to now.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// One pass: attaches to what is new, detaches from what went.
    pub async fn sync(&mut self, dp: &mut Datapath) -> Result<(), netlink::NetlinkError> {
        let devices = netlink::list(&self.handle).await?;
        let mut want = classify(&devices, &self.node_addresses, self.cfg.pinned.as_deref());
        if !self.cfg.pods {
            want.pods.clear();
        }
        if let Some(pinned) = &self.cfg.pinned {
            for name in pinned.iter().filter(|n| !want.node.contains(*n)) {
                if self.first {
                    tracing::warn!(
                        interface = name,
                        "--interface names a device that does not exist (yet): attaching when it appears"
                    );
                }
            }
        }
        let by_name: BTreeMap<&str, &Device> =
            devices.iter().map(|d| (d.name.as_str(), d)).collect();
        // What was attached before (by this agent, or pinned by an earlier one).
        let attached: BTreeSet<Hook> = if self.first {
            dp.pinned_hooks()
                .into_iter()
                .filter(|h| h.interface().is_some())
                .collect()
        } else {
            self.roles
                .node
                .iter()
                .map(|n| Hook::Xdp(n.clone()))
                .chain(self.roles.pods.iter().map(|n| Hook::Tc(n.clone())))
                .collect()
        };
        let wanted: BTreeSet<Hook> = want
            .node
            .iter()
            .map(|n| Hook::Xdp(n.clone()))
            .chain(want.pods.iter().map(|n| Hook::Tc(n.clone())))
            .collect();
        for hook in attached.difference(&wanted) {
            match dp.detach(hook) {
                Ok(()) => tracing::info!(%hook, "detached: the device went or changed role"),
                Err(e) => tracing::warn!(%hook, error = %e, "cannot detach"),
            }
        }
        let mut attached_now = Roles::default();
        for hook in &wanted {
            let is_new = self.first || !attached.contains(hook);
            let result = match hook {
                Hook::Xdp(i) if is_new => dp.attach_xdp(i, self.cfg.mode).map(Some),
                Hook::Tc(i) if is_new => dp.attach_tc(i).map(Some),
                _ => Ok(None),
            };
            match result {
                Ok(how) => {
                    if let Some(how) = how {
                        log_attached(hook, how);
                    }
                    match hook {
                        Hook::Xdp(i) => attached_now.node.insert(i.clone()),
                        Hook::Tc(i) => attached_now.pods.insert(i.clone()),
                        Hook::Cgroup(_) => false,
                    };
                }
                Err(e) => {
                    tracing::warn!(%hook, error = %e, "cannot attach; retrying when devices change")
                }
            }
        }
        self.update_tx_ports(&attached_now, &by_name);
        self.roles = attached_now;
        self.first = false;
        Ok(())
    }

    /// The redirect targets: the node devices the XDP program runs on, each with how it
    /// takes XDP frames.
    fn update_tx_ports(&mut self, roles: &Roles, devices: &BTreeMap<&str, &Device>) {
        let mut keep = Vec::new();
        for name in &roles.node {
            let Some(dev) = devices.get(name.as_str()) else {
                continue;
            };
            keep.push(dev.index);
            let flags = *self
                .flags
                .entry(dev.index)
                .or_insert_with(|| peer::tx_flags(dev));
            if let Err(e) = self.tx.set(dev.index, flags) {
                tracing::warn!(interface = name, error = %e, "cannot record the interface as a redirect target");
            }
            if flags == 0 {
                tracing::info!(
                    interface = name,
                    "XDP frames for this interface go through the kernel (its veth peer has neither GRO nor an XDP program)"
                );
            }
        }
        self.flags.retain(|i, _| keep.contains(i));
        if let Err(e) = self.tx.retain(&keep) {
            tracing::warn!(error = %e, "cannot prune the redirect targets");
        }
    }
}

fn log_attached(hook: &Hook, how: Attachment) {
    match how {
        Attachment::New(mode) => tracing::info!(%hook, ?mode, "attached"),
        Attachment::Attached => tracing::info!(%hook, "attached"),
        Attachment::Replaced => tracing::info!(
            %hook,
            "took over the pinned link: this agent's program replaced the old one atomically"
        ),
    }
}
