//! The node's network devices, found and followed through netlink, and what each is to
//! the datapath:
//! - **node devices** carry traffic from outside the node: the ones that hold the Node's
//!   addresses or the default routes (as Cilium detects its devices), or exactly the
//!   `--interface` list when one is given. They get the XDP program.
//! - **pod devices** are the host sides of local pods' veths (a veth whose peer lives in
//!   another network namespace, as every CNI leaves it), created whenever a pod starts.
//!   They get the tc program (replies of local backends to translated flows).
//!
//! [`netlink`] lists and watches the devices; [`peer`] finds out whether an XDP
//! redirect into a node device that is a veth can be delivered (its peer must have NAPI:
//! GRO or an XDP program); [`classify`] is the pure rule, tested on its own.

pub mod follow;
pub mod netlink;
pub mod peer;

use std::{collections::BTreeSet, net::IpAddr};

/// A network device, as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub loopback: bool,
    /// For a veth: its peer.
    pub veth: Option<Veth>,
    /// Its global unicast addresses.
    pub addresses: Vec<IpAddr>,
    /// It carries a default route (IPv4 or IPv6, main table).
    pub default_route: bool,
    /// An XDP program is attached to it (by anyone).
    pub xdp: bool,
}

/// The other end of a veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Veth {
    pub peer_index: u32,
    /// The peer's network namespace id as seen from here; `None`: the same namespace.
    pub peer_netns: Option<i32>,
}

/// What the devices are to the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    pub node: BTreeSet<String>,
    pub pods: BTreeSet<String>,
}

/// Sorts devices into node devices and pod devices (see the module docs). `pinned` is the
/// `--interface` list: the node devices then are exactly those that exist.
pub fn classify(devices: &[Device], node_addresses: &[IpAddr], pinned: Option<&[String]>) -> Roles {
    let node: BTreeSet<String> = devices
        .iter()
        .filter(|d| match pinned {
            // Named on the command line: whatever it is (loopback too, for tests).
            Some(list) => list.contains(&d.name),
            None => {
                !d.loopback
                    && (d.default_route || d.addresses.iter().any(|a| node_addresses.contains(a)))
            }
        })
        .map(|d| d.name.clone())
        .collect();
    let pods = devices
        .iter()
        .filter(|d| !node.contains(&d.name))
        .filter(|d| d.veth.is_some_and(|v| v.peer_netns.is_some()))
        .map(|d| d.name.clone())
        .collect();
    Roles { node, pods }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, addrs: &[&str], default_route: bool, veth_remote: Option<bool>) -> Device {
        Device {
            index: 0,
            name: name.into(),
            loopback: name == "lo",
            veth: veth_remote.map(|remote| Veth {
                peer_index: 2,
                peer_netns: remote.then_some(1),
            }),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            default_route,
            xdp: false,
        }
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn node_devices_carry_the_node_addresses_or_default_routes_and_pods_are_remote_veths() {
        let devices = [
            dev("lo", &["127.0.0.1"], false, None),
            dev("eth0", &["192.168.1.10"], true, None),
            dev("eth1", &["10.0.0.5"], false, None),
            dev("storage", &["172.16.0.1"], false, None),
            dev("cali1234", &[], false, Some(true)),
            dev("lxc9", &[], false, Some(true)),
            dev("vethlocal", &[], false, Some(false)),
        ];
        let node: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        let r = classify(&devices, &node, None);
        assert_eq!(names(&r.node), ["eth0", "eth1"]);
        assert_eq!(names(&r.pods), ["cali1234", "lxc9"]);
    }

    #[test]
    fn a_pinned_list_is_the_node_devices_that_exist() {
        let devices = [
            dev("eth0", &["192.168.1.10"], true, None),
            dev("be1", &["10.201.1.1"], false, Some(true)),
            dev("be2", &["10.201.2.1"], false, Some(true)),
        ];
        let pinned = vec!["be1".to_string(), "gone0".to_string()];
        let r = classify(&devices, &[], Some(&pinned));
        assert_eq!(names(&r.node), ["be1"]);
        assert_eq!(names(&r.pods), ["be2"], "other remote veths are still pods");
    }
}
