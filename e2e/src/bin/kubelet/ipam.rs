//! Pod IP addresses from the pod CIDR: lowest free address from `.2` upward, never the bridge's.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("{0:?} is not an IPv4 CIDR such as 10.88.0.0/16")]
    BadCidr(String),
    #[error("pod CIDR {0} has no free address left")]
    Exhausted(Cidr),
}

/// An IPv4 network, `10.88.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u32,
    prefix: u8,
}

impl Cidr {
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network
    }

    fn broadcast(&self) -> u32 {
        self.network | !self.mask()
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpamError::BadCidr(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mut cidr = Cidr { network: 0, prefix };
        cidr.network = u32::from(addr) & cidr.mask();
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// Which pod addresses are in use.
#[derive(Debug)]
pub struct Ipam {
    cidr: Cidr,
    gateway: Ipv4Addr,
    used: BTreeSet<u32>,
}

impl Ipam {
    pub fn new(cidr: Cidr, gateway: Ipv4Addr) -> Self {
        Self {
            cidr,
            gateway,
            used: BTreeSet::new(),
        }
    }

    fn usable(&self, ip: u32) -> bool {
        ip >= self.cidr.network + 2
            && ip < self.cidr.broadcast()
            && ip != u32::from(self.gateway)
            && !self.used.contains(&ip)
    }

    /// `preferred` (a pod's address from before a kubelet restart) when it is free, else the
    /// lowest free address.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        let ip = preferred
            .map(u32::from)
            .filter(|&ip| self.cidr.contains(Ipv4Addr::from(ip)) && self.usable(ip))
            .or_else(|| (self.cidr.network + 2..self.cidr.broadcast()).find(|&ip| self.usable(ip)))
            .ok_or(IpamError::Exhausted(self.cidr))?;
        self.used.insert(ip);
        Ok(Ipv4Addr::from(ip))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs() {
        let c: Cidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!("10.88.7.1/16".parse::<Cidr>().unwrap(), c);
        assert!(c.contains(ip("10.88.255.254")));
        assert!(!c.contains(ip("10.89.0.1")));
        assert!("10.88.0.0".parse::<Cidr>().is_err());
        assert!("10.88.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn allocates_lowest_free_from_two_skipping_the_bridge() {
        let mut ipam = Ipam::new("10.88.0.0/16".parse().unwrap(), ip("10.88.0.3"));
        assert_eq!(ipam.allocate(None).unwrap(), ip("10.88.0.2"));
        assert_eq!(ipam.allocate(None).unwrap(), ip("10.88.0.4"));
        assert_eq!(ipam.allocate(None).unwrap(), ip("10.88.0.5"));
        ipam.release(ip("10.88.0.2"));
        assert_eq!(ipam.allocate(None).unwrap(), ip("10.88.0.2"));
    }

    #[test]
    fn honours_a_free_preferred_address_only() {
        let mut ipam = Ipam::new("10.88.0.0/16".parse().unwrap(), ip("10.88.0.1"));
        assert_eq!(
            ipam.allocate(Some(ip("10.88.0.9"))).unwrap(),
            ip("10.88.0.9")
        );
        assert_eq!(
            ipam.allocate(Some(ip("10.88.0.9"))).unwrap(),
            ip("10.88.0.2")
        );
        assert_eq!(
            ipam.allocate(Some(ip("10.88.0.1"))).unwrap(),
            ip("10.88.0.3")
        );
        assert_eq!(
            ipam.allocate(Some(ip("192.168.0.5"))).unwrap(),
            ip("10.88.0.4")
        );
    }

    #[test]
    fn runs_out() {
        let mut ipam = Ipam::new("10.0.0.0/30".parse().unwrap(), ip("10.0.0.1"));
        assert_eq!(ipam.allocate(None).unwrap(), ip("10.0.0.2"));
        assert!(matches!(ipam.allocate(None), Err(IpamError::Exhausted(_))));
    }
}
