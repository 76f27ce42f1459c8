//! Owns the `network-loss` fault: drop a share of the matched packets from an nftables table the
//! fault owns (`numgen random`), and delete exactly that table on revert.

use serde::{Deserialize, Serialize};

use super::Context;
use super::check::{self, Checked, FieldError};
use super::net::{
    Chain, Direction, MatchTable, NetMatch, NftTable, family, nft_ruleset, nft_table,
};
use crate::units::Percent;

/// The keys of a `network-loss` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    percent: Option<Percent>,
    #[serde(rename = "match")]
    matching: Option<MatchTable>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<NetworkLoss, FieldError> {
        let Some(percent) = self.percent else {
            return Err(FieldError::raw("percent", "network-loss needs `percent`, the share of matched packets to drop, e.g. `percent = \"30%\"`".to_owned()));
        };
        let Some(m) = self.matching else {
            return Err(FieldError::raw("match", "network-loss needs `match` with at least one of `dst`, `src`, `port` or `direction`, e.g. `match = { port = 5432 }`".to_owned()));
        };
        Ok(NetworkLoss {
            percent: percent.0,
            matching: NetMatch {
                dst: m.dst,
                src: m.src,
                port: m.port,
                direction: m.direction,
            },
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkLoss {
    /// The share of matched packets to drop, a fraction in `(0, 1]`.
    pub(crate) percent: f64,
    #[serde(rename = "match")]
    pub(crate) matching: NetMatch,
}

impl NetworkLoss {
    pub(crate) fn describe(&self) -> String {
        format!(
            "drop {} of {} (an nftables table of its own, deleted on revert)",
            Percent(self.percent),
            self.matching
        )
    }

    /// The exact ruleset `nft -f -` is fed. Traffic over loopback passes both the output and the
    /// input hook, so with `direction = "both"` it gets two chances to be dropped.
    pub(crate) fn ruleset(&self, table: &str, control_port: Option<u16>) -> String {
        let chains = match self.matching.direction() {
            Direction::Egress => vec![Chain {
                hook: "output",
                rules: self.rules(false),
            }],
            Direction::Ingress => vec![Chain {
                hook: "input",
                rules: self.rules(false),
            }],
            Direction::Both => {
                vec![
                    Chain {
                        hook: "input",
                        rules: self.rules(true),
                    },
                    Chain {
                        hook: "output",
                        rules: self.rules(false),
                    },
                ]
            }
        };
        nft_ruleset(table, control_port, &chains)
    }

    /// The rules of one chain; `mirrored` swaps the address sides, for answers coming in.
    fn rules(&self, mirrored: bool) -> Vec<String> {
        let m = &self.matching;
        let (to, from) = if mirrored {
            ("saddr", "daddr")
        } else {
            ("daddr", "saddr")
        };
        let mut addresses = Vec::new();
        if let Some(dst) = m.dst {
            addresses.push(format!("{} {to} {dst}", family(dst)));
        }
        if let Some(src) = m.src {
            addresses.push(format!("{} {from} {src}", family(src)));
        }
        let verdict = format!("{}drop", chance(self.percent));
        let rule = |port: Option<String>| {
            let mut parts = addresses.clone();
            parts.extend(port);
            parts.push(verdict.clone());
            parts.join(" ")
        };
        match m.port {
            None => vec![rule(None)],
            // Two rules, so either side's port matches; the second skips packets the first one
            // already rolled the dice for, or such packets would be dropped more often.
            Some(port) => vec![
                rule(Some(format!("meta l4proto {{ tcp, udp }} th dport {port}"))),
                rule(Some(format!(
                    "meta l4proto {{ tcp, udp }} th sport {port} th dport != {port}"
                ))),
            ],
        }
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> Checked {
        check::share("percent", self.percent)?;
        // nft draws from 10 000 values, so shares are whole hundredths of a percent; anything
        // else would install a rule that drops a different share (or nothing) and still verify.
        let steps = self.percent * STEPS;
        if (steps - steps.round()).abs() > 1e-6 {
            return Err(FieldError::new(
                "percent",
                format!(
                    "must be a whole number of steps of 0.01% (nft draws from {STEPS} values); got {}",
                    exact_percent(self.percent)
                ),
            ));
        }
        let m = &self.matching;
        if m.dst.is_none() && m.src.is_none() && m.port.is_none() && m.direction.is_none() {
            return Err(FieldError::new(
                "match",
                "needs at least one of `dst`, `src`, `port` or `direction`; an empty match is a mistake (to drop every packet, say `direction = \"both\"`)",
            ));
        }
        check::same_family(m.dst, m.src)?;
        check::port("port", m.port)
    }

    /// The exact ruleset, for `plan`. Pure.
    pub(crate) fn changes(&self, fault_id: &str) -> String {
        format!(
            "nft -f - <<EOF\n{}EOF\n",
            self.ruleset(&nft_table(fault_id), None)
        )
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<NftTable, String> {
        super::net::refuse_control_port(self.matching.port, ctx.control_port)?;
        let table = nft_table(ctx.fault_id);
        let ruleset = self.ruleset(&table, ctx.control_port);
        Ok(NftTable { table, ruleset })
    }
}

/// How many values nft's random number is drawn from: the finest share it can express is one.
const STEPS: f64 = 10_000.0;

/// A fraction as a percentage with every digit it has, so a share finer than the step shows.
fn exact_percent(fraction: f64) -> String {
    format!("{}%", fraction * 100.0)
}

/// The nft expression that matches a random share of packets; empty when every packet is dropped.
fn chance(fraction: f64) -> String {
    if fraction >= 1.0 {
        return String::new();
    }
    let percent = fraction * 100.0;
    if (percent - percent.round()).abs() < 1e-9 {
        format!("numgen random mod 100 < {} ", percent.round() as u32)
    } else {
        // Hundredths of a percent, for shares like 0.5%.
        format!(
            "numgen random mod 10000 < {} ",
            (fraction * 10_000.0).round() as u32
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(percent: f64, matching: NetMatch) -> NetworkLoss {
        NetworkLoss { percent, matching }
    }

    #[test]
    fn shares_nft_cannot_draw_are_refused_with_the_step() {
        let port = NetMatch {
            port: Some(80),
            ..NetMatch::default()
        };
        for ok in [1.0, 0.5, 0.005, 0.0001] {
            assert_eq!(loss(ok, port.clone()).check(), Ok(()), "{ok}");
        }
        let e = loss(0.000_01, port.clone())
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("`percent` must be a whole number of steps of 0.01% (nft draws from 10000 values); got 0.001"),
            "{e}"
        );
        assert!(loss(0.000_15, port).check().is_err(), "1.5 steps");
    }

    #[test]
    fn loss_on_a_port_in_both_directions() {
        let f = loss(
            0.3,
            NetMatch {
                port: Some(5432),
                ..NetMatch::default()
            },
        );
        assert_eq!(
            f.ruleset("faultline_r_0", None),
            "table inet faultline_r_0 {
\tchain input {
\t\ttype filter hook input priority -10; policy accept;
\t\tmeta l4proto { tcp, udp } th dport 5432 numgen random mod 100 < 30 drop
\t\tmeta l4proto { tcp, udp } th sport 5432 th dport != 5432 numgen random mod 100 < 30 drop
\t}
\tchain output {
\t\ttype filter hook output priority -10; policy accept;
\t\tmeta l4proto { tcp, udp } th dport 5432 numgen random mod 100 < 30 drop
\t\tmeta l4proto { tcp, udp } th sport 5432 th dport != 5432 numgen random mod 100 < 30 drop
\t}
}
"
        );
    }

    #[test]
    fn egress_loss_to_a_network_spares_the_control_channel() {
        let f = loss(
            0.005,
            NetMatch {
                dst: Some("10.0.0.0/24".parse().unwrap()),
                direction: Some(Direction::Egress),
                ..NetMatch::default()
            },
        );
        assert_eq!(
            f.ruleset("faultline_r_1", Some(7443)),
            "table inet faultline_r_1 {
\tchain output {
\t\ttype filter hook output priority -10; policy accept;
\t\ttcp dport 7443 accept
\t\ttcp sport 7443 accept
\t\tip daddr 10.0.0.0/24 numgen random mod 10000 < 50 drop
\t}
}
"
        );
    }

    #[test]
    fn answers_are_matched_mirrored_and_full_loss_needs_no_dice() {
        let f = loss(
            1.0,
            NetMatch {
                dst: Some("fd00::5".parse().unwrap()),
                src: Some("fd00::1".parse().unwrap()),
                ..NetMatch::default()
            },
        );
        assert_eq!(f.rules(false), ["ip6 daddr fd00::5 ip6 saddr fd00::1 drop"]);
        assert_eq!(f.rules(true), ["ip6 saddr fd00::5 ip6 daddr fd00::1 drop"]);
        assert_eq!(
            f.describe(),
            "drop 100% of packets to fd00::5 from fd00::1, and the incoming ones back (an nftables table of its own, deleted on revert)"
        );
    }
}
