//! Owns the `partition` fault: drop all traffic to and from the listed peers (optionally only on
//! some ports) from an nftables table the fault owns, and delete exactly that table on revert.

use serde::{Deserialize, Serialize};

use super::Context;
use super::net::{Chain, Cidr, NftTable, family, nft_ruleset, nft_set, nft_table};

/// The keys of a `partition` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    peers: Option<Vec<Cidr>>,
    ports: Option<Vec<u16>>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<Partition, super::FieldError> {
        let Some(peers) = self.peers else {
            return Err(super::FieldError::raw("peers", "partition needs `peers`, the addresses or networks to cut off, e.g. `peers = [\"10.0.0.5\", \"10.0.1.0/24\"]`".to_owned()));
        };
        // On the wire no ports means every port; written out, an empty list is a mistake.
        if self.ports.as_ref().is_some_and(Vec::is_empty) {
            return Err(super::FieldError::raw(
                "ports",
                "`ports = []` would match nothing; leave `ports` out to cut off every port"
                    .to_owned(),
            ));
        }
        Ok(Partition {
            peers,
            ports: self.ports.unwrap_or_default(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Partition {
    pub(crate) peers: Vec<Cidr>,
    /// When not empty, only traffic with the peers on these ports (either side) is dropped.
    #[serde(default)]
    pub(crate) ports: Vec<u16>,
}

impl Partition {
    pub(crate) fn describe(&self) -> String {
        let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
        let ports = match self.ports.as_slice() {
            [] => String::new(),
            ports => format!(
                " on port(s) {}",
                ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "drop all traffic to and from {}{ports} (an nftables table of its own, deleted on revert)",
            peers.join(", ")
        )
    }

    /// The exact ruleset `nft -f -` is fed.
    pub(crate) fn ruleset(&self, table: &str, control_port: Option<u16>) -> String {
        let chains = [
            Chain {
                hook: "input",
                rules: self.rules("saddr"),
            },
            Chain {
                hook: "output",
                rules: self.rules("daddr"),
            },
        ];
        nft_ruleset(table, control_port, &chains)
    }

    /// The rules of one chain; `side` is where the peer's address is in the packet.
    fn rules(&self, side: &str) -> Vec<String> {
        let mut rules = Vec::new();
        for v6 in [false, true] {
            let peers: Vec<Cidr> = self
                .peers
                .iter()
                .copied()
                .filter(|p| p.is_ipv6() == v6)
                .collect();
            let Some(first) = peers.first() else { continue };
            let addr = format!("{} {side} {}", family(*first), nft_set(&peers));
            if self.ports.is_empty() {
                rules.push(format!("{addr} drop"));
            } else {
                let ports = nft_set(&self.ports);
                rules.push(format!(
                    "{addr} meta l4proto {{ tcp, udp }} th dport {ports} drop"
                ));
                rules.push(format!(
                    "{addr} meta l4proto {{ tcp, udp }} th sport {ports} drop"
                ));
            }
        }
        rules
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> super::check::Checked {
        if self.peers.is_empty() {
            return Err(super::check::FieldError::new(
                "peers",
                "must not be empty: name the addresses or networks to cut off, e.g. `peers = [\"10.0.0.5\", \"10.0.1.0/24\"]`",
            ));
        }
        for port in &self.ports {
            super::check::port("ports", Some(*port))?;
        }
        Ok(())
    }

    /// The exact ruleset, for `plan`. Pure.
    pub(crate) fn changes(&self, fault_id: &str) -> String {
        format!(
            "nft -f - <<EOF\n{}EOF\n",
            self.ruleset(&nft_table(fault_id), None)
        )
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<NftTable, String> {
        // Ports that are all the control port leave nothing to cut: the agent exempts that port.
        if let [first, rest @ ..] = self.ports.as_slice() {
            if rest.iter().all(|p| p == first) {
                super::net::refuse_control_port(Some(*first), ctx.control_port)?;
            }
        }
        let table = nft_table(ctx.fault_id);
        let ruleset = self.ruleset(&table, ctx.control_port);
        Ok(NftTable { table, ruleset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_of_both_families_are_cut_off_in_both_directions() {
        let f = Partition {
            peers: vec![
                "10.0.0.5".parse().unwrap(),
                "10.0.1.0/24".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ports: vec![],
        };
        assert_eq!(
            f.ruleset("faultline_r_0", Some(7443)),
            "table inet faultline_r_0 {
\tchain input {
\t\ttype filter hook input priority -10; policy accept;
\t\ttcp dport 7443 accept
\t\ttcp sport 7443 accept
\t\tip saddr { 10.0.0.5, 10.0.1.0/24 } drop
\t\tip6 saddr fd00::/8 drop
\t}
\tchain output {
\t\ttype filter hook output priority -10; policy accept;
\t\ttcp dport 7443 accept
\t\ttcp sport 7443 accept
\t\tip daddr { 10.0.0.5, 10.0.1.0/24 } drop
\t\tip6 daddr fd00::/8 drop
\t}
}
"
        );
    }

    #[test]
    fn ports_narrow_the_partition_to_either_side() {
        let f = Partition {
            peers: vec!["10.0.0.5".parse().unwrap()],
            ports: vec![5432, 6379],
        };
        assert_eq!(
            f.rules("daddr"),
            [
                "ip daddr 10.0.0.5 meta l4proto { tcp, udp } th dport { 5432, 6379 } drop",
                "ip daddr 10.0.0.5 meta l4proto { tcp, udp } th sport { 5432, 6379 } drop",
            ]
        );
        assert_eq!(
            f.describe(),
            "drop all traffic to and from 10.0.0.5 on port(s) 5432, 6379 (an nftables table of its own, deleted on revert)"
        );
    }
}
