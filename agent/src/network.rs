//! Each container's network: its own network namespace joined to the host by a veth pair on a /30 cut from
//! the agent's `container_subnet` (the host end gets the first address, the container the second, with a
//! default route through the host end). The agent reaches the app at the container's address. Made and
//! removed with iproute2's `ip`, which every node has.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

/// The network containers' /30s are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    /// `10.89.0.0/16`: a /16 to /24 whose host bits are zero.
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an IPv4 network like 10.89.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (16..=24).contains(p))
            .ok_or_else(|| format!("the prefix of `{s}` must be 16 to 24"))?;
        let base = u32::from(addr);
        if base & ((1u32 << (32 - prefix)) - 1) != 0 {
            return Err(format!("`{s}` has host bits set"));
        }
        Ok(Subnet { base, prefix })
    }

    /// How many /30 slots the subnet holds.
    pub fn slots(&self) -> u32 {
        1 << (32 - self.prefix - 2)
    }

    /// The host and container addresses of slot `i`.
    pub fn addresses(&self, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
        let net = self.base + slot * 4;
        (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2))
    }
}

/// Names derived from the allocation id (interface names are at most 15 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub netns: String,
    pub host_veth: String,
    pub peer_veth: String,
}

pub fn names(allocation: &str) -> Names {
    let tag: String = blake3::hash(allocation.as_bytes()).to_hex()[..10].to_owned();
    Names {
        netns: format!("spacedock-{tag}"),
        host_veth: format!("sdh{tag}"),
        peer_veth: format!("sdc{tag}"),
    }
}

/// The path containers join the namespace by.
pub fn netns_path(names: &Names) -> String {
    format!("/var/run/netns/{}", names.netns)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Makes the namespace and veth pair for slot `slot`; on failure removes what it made.
pub fn create(names: &Names, subnet: &Subnet, slot: u32) -> anyhow::Result<Ipv4Addr> {
    remove(names);
    let (host, container) = subnet.addresses(slot);
    let host_cidr = format!("{host}/30");
    let container_cidr = format!("{container}/30");
    let host_s = host.to_string();
    let ns = names.netns.as_str();
    let steps: [&[&str]; 9] = [
        &["netns", "add", ns],
        &[
            "link",
            "add",
            &names.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &names.peer_veth,
        ],
        &["link", "set", &names.peer_veth, "netns", ns],
        &["addr", "add", &host_cidr, "dev", &names.host_veth],
        &["link", "set", &names.host_veth, "up"],
        &["-n", ns, "link", "set", &names.peer_veth, "name", "eth0"],
        &["-n", ns, "addr", "add", &container_cidr, "dev", "eth0"],
        &["-n", ns, "link", "set", "eth0", "up"],
        &["-n", ns, "link", "set", "lo", "up"],
    ];
    let result = steps
        .iter()
        .try_for_each(|args| ip(args))
        .and_then(|()| ip(&["-n", ns, "route", "add", "default", "via", &host_s]));
    if let Err(e) = result {
        remove(names);
        return Err(e.context(format!("setting up the network of {ns}")));
    }
    Ok(container)
}

/// Removes the namespace (which takes the veth pair with it) and the host end if it is left.
pub fn remove(names: &Names) {
    let _ = ip(&["netns", "del", &names.netns]);
    let _ = ip(&["link", "del", &names.host_veth]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_cut_into_slash_30s() {
        let s = Subnet::parse("10.89.0.0/16").unwrap();
        assert_eq!(s.slots(), 16384);
        assert_eq!(
            s.addresses(0),
            (Ipv4Addr::new(10, 89, 0, 1), Ipv4Addr::new(10, 89, 0, 2))
        );
        assert_eq!(
            s.addresses(65),
            (Ipv4Addr::new(10, 89, 1, 5), Ipv4Addr::new(10, 89, 1, 6))
        );
        assert!(
            Subnet::parse("10.89.0.1/16")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            Subnet::parse("10.0.0.0/8")
                .unwrap_err()
                .contains("16 to 24")
        );
        assert!(Subnet::parse("nope").is_err());
    }

    #[test]
    fn names_fit_interface_limits() {
        let n = names("0123456789abcdef01234567");
        assert!(n.host_veth.len() <= 15 && n.peer_veth.len() <= 15);
        assert_ne!(names("a"), names("b"));
    }

    /// Needs root and iproute2 (ops/test.sh runs as root): a namespace answers from its address.
    #[test]
    fn a_namespace_is_made_reachable_and_removed() {
        let subnet = Subnet::parse("10.213.0.0/24").unwrap();
        let n = names(&format!("net-test-{}", std::process::id()));
        let addr = create(&n, &subnet, 3).unwrap();
        assert_eq!(addr, Ipv4Addr::new(10, 213, 0, 14));
        let ping = Command::new("ip")
            .args([
                "netns", "exec", &n.netns, "ip", "-4", "addr", "show", "eth0",
            ])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&ping.stdout);
        assert!(shown.contains("10.213.0.14/30"), "{shown}");
        // The host reaches the container's address over the veth.
        let listener = Command::new("ip")
            .args([
                "netns", "exec", &n.netns, "busybox", "nc", "-l", "-p", "9999",
            ])
            .spawn();
        let mut child = listener.expect("busybox nc in the namespace: install busybox-static");
        let mut connected = false;
        for _ in 0..50 {
            if std::net::TcpStream::connect((addr, 9999)).is_ok() {
                connected = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(connected, "no TCP connection to {addr}:9999");
        remove(&n);
        assert!(!std::path::Path::new(&netns_path(&n)).exists());
    }
}
