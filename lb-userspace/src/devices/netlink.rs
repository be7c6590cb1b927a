//! Listing the devices (links, their global addresses, the default routes) and watching
//! for changes, through rtnetlink.

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    address::{AddressAttribute, AddressScope},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkXdp, XdpAttached},
    route::{RouteAttribute, RouteMessage},
};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};

use super::{Device, Veth};

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    pub what: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn err(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |e| NetlinkError {
        what,
        source: Box::new(e),
    }
}

/// A netlink connection in this thread's network namespace, driven by the current
/// runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError {
        what: "connect",
        source: Box::new(e),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Every device, with its addresses and whether it carries a default route.
pub async fn list(handle: &Handle) -> Result<Vec<Device>, NetlinkError> {
    let mut devices: Vec<Device> = handle
        .link()
        .get()
        .execute()
        .map_ok(|m| device(&m))
        .try_collect()
        .await
        .map_err(err("list links"))?;
    let addresses: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(err("list addresses"))?;
    for a in addresses {
        if a.header.scope != AddressScope::Universe {
            continue;
        }
        let ip = a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let (Some(ip), Some(d)) = (ip, devices.iter_mut().find(|d| d.index == a.header.index)) {
            d.addresses.push(ip);
        }
    }
    let mut routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(err("list IPv4 routes"))?;
    routes.extend(
        handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(err("list IPv6 routes"))?,
    );
    for r in routes {
        // Default routes of the main table (254).
        if r.header.destination_prefix_length != 0 || r.header.table != 254 {
            continue;
        }
        for attr in &r.attributes {
            let oifs: Vec<u32> = match attr {
                RouteAttribute::Oif(i) => vec![*i],
                RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
                _ => continue,
            };
            for d in devices.iter_mut().filter(|d| oifs.contains(&d.index)) {
                d.default_route = true;
            }
        }
    }
    Ok(devices)
}

/// The device a link message describes (addresses and routes come separately).
pub fn device(m: &netlink_packet_route::link::LinkMessage) -> Device {
    let mut name = String::new();
    let mut veth = false;
    let mut peer_index = None;
    let mut peer_netns = None;
    let mut xdp = false;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Link(i) => peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(id) => peer_netns = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                veth |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::Xdp(x) => {
                xdp |= x
                    .iter()
                    .any(|x| matches!(x, LinkXdp::Attached(a) if *a != XdpAttached::None));
            }
            _ => {}
        }
    }
    Device {
        index: m.header.index,
        name,
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        veth: match (veth, peer_index) {
            (true, Some(peer_index)) => Some(Veth {
                peer_index,
                peer_netns,
            }),
            _ => None,
        },
        addresses: Vec::new(),
        default_route: false,
        xdp,
    }
}

/// A stream that yields whenever links, addresses or routes change (a burst of changes
/// may yield several times: the consumer re-lists).
pub fn changes() -> Result<impl futures::Stream<Item = ()> + Unpin, NetlinkError> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(|e| NetlinkError {
        what: "subscribe to link, address and route changes",
        source: Box::new(e),
    })?;
    tokio::spawn(conn);
    Ok(messages.map(|_| ()))
}
