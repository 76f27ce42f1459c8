//! Owns the `bandwidth` fault: limit what leaves a device to a rate with a root qdisc the fault
//! owns (tbf for the whole device, htb with a class and u32 filters for a match), and delete
//! exactly that qdisc on revert.

use serde::{Deserialize, Serialize};

use super::Context;
use super::net::{
    BitRate, Cmd, MatchTable, RootQdisc, TcMatch, device, tc_handle, tc_match, u32_filters,
};

/// The keys of a `bandwidth` table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    device: Option<String>,
    rate: Option<BitRate>,
    #[serde(rename = "match")]
    matching: Option<MatchTable>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<Bandwidth, super::FieldError> {
        let device = device("bandwidth", self.device)?;
        let Some(rate) = self.rate else {
            return Err(super::FieldError::raw(
                "rate",
                "bandwidth needs `rate`, e.g. `rate = \"1mbit\"`".to_owned(),
            ));
        };
        Ok(Bandwidth {
            device,
            rate,
            matching: tc_match(self.matching)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Bandwidth {
    pub(crate) device: String,
    pub(crate) rate: BitRate,
    #[serde(rename = "match", default)]
    pub(crate) matching: TcMatch,
}

impl Bandwidth {
    pub(crate) fn describe(&self) -> String {
        let scope = if self.matching.is_empty() {
            "everything".to_owned()
        } else {
            self.matching.to_string()
        };
        format!(
            "limit {scope} leaving {} to {} (a root qdisc of its own, deleted on revert)",
            self.device, self.rate
        )
    }

    /// The exact tc commands the fault runs, in order.
    pub(crate) fn commands(&self, handle: u16) -> (&'static str, Vec<Cmd>) {
        let dev = self.device.as_str();
        let root = format!("{handle:x}:");
        let rate = self.rate.to_string();
        if self.matching.is_empty() {
            let burst = burst_bytes(self.rate).to_string();
            let args = [
                "qdisc", "add", "dev", dev, "root", "handle", &root, "tbf", "rate", &rate, "burst",
                &burst, "latency", "50ms",
            ];
            return ("tbf", vec![Cmd::new("tc", &args)]);
        }
        let class = format!("{handle:x}:1");
        let mut cmds = vec![
            // No `default`: traffic no filter claims goes straight out, unshaped.
            Cmd::new(
                "tc",
                &["qdisc", "add", "dev", dev, "root", "handle", &root, "htb"],
            ),
            Cmd::new(
                "tc",
                &[
                    "class", "add", "dev", dev, "parent", &root, "classid", &class, "htb", "rate",
                    &rate, "ceil", &rate,
                ],
            ),
        ];
        cmds.extend(u32_filters(dev, handle, &self.matching, &class));
        ("htb", cmds)
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> super::check::Checked {
        super::check::device_name(&self.device)?;
        check_tc_match(&self.matching)
    }

    /// The exact tc commands, for `plan`. Pure.
    pub(crate) fn changes(&self, fault_id: &str) -> String {
        super::net::lines(&self.commands(tc_handle(fault_id)).1)
    }

    /// Whether the fault could take the root of its device now. Reads the host.
    pub(crate) fn preview(&self) -> String {
        super::net::preview_device(&self.device)
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<RootQdisc, String> {
        super::net::refuse_control_port(self.matching.port, ctx.control_port)?;
        super::net::prepare_root(
            &self.device,
            self.matching.is_empty(),
            ctx.control_port,
            ctx.fault_id,
            |handle| self.commands(handle),
        )
    }
}

/// The token bucket: 10 ms worth of the rate, but never below 16 KiB, or full-size (and
/// GSO-merged) packets could not pass at low rates.
fn burst_bytes(rate: BitRate) -> u64 {
    (rate.0 / 8 / 100).max(16 * 1024)
}

/// The match of a tc fault: the ports and address versions it names must be able to match.
pub(crate) fn check_tc_match(m: &TcMatch) -> super::check::Checked {
    super::check::same_family(m.dst, m.src)?;
    super::check::port("port", m.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(f: &Bandwidth) -> Vec<String> {
        f.commands(0x1abc)
            .1
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_whole_device_gets_a_tbf_at_the_root() {
        let f = Bandwidth {
            device: "eth0".into(),
            rate: "1mbit".parse().unwrap(),
            matching: TcMatch::default(),
        };
        assert_eq!(
            commands(&f),
            ["tc qdisc add dev eth0 root handle 1abc: tbf rate 1mbit burst 16384 latency 50ms"]
        );
        assert_eq!(
            f.describe(),
            "limit everything leaving eth0 to 1mbit (a root qdisc of its own, deleted on revert)"
        );
    }

    #[test]
    fn a_match_gets_an_htb_class_and_u32_filters() {
        let f = Bandwidth {
            device: "eth0".into(),
            rate: "500kbit".parse().unwrap(),
            matching: TcMatch {
                dst: Some("10.0.0.5".parse().unwrap()),
                src: None,
                port: Some(5432),
            },
        };
        assert_eq!(
            commands(&f),
            [
                "tc qdisc add dev eth0 root handle 1abc: htb",
                "tc class add dev eth0 parent 1abc: classid 1abc:1 htb rate 500kbit ceil 500kbit",
                "tc filter add dev eth0 parent 1abc: protocol ip prio 1 u32 match ip dst 10.0.0.5/32 match ip dport 5432 0xffff flowid 1abc:1",
                "tc filter add dev eth0 parent 1abc: protocol ip prio 1 u32 match ip dst 10.0.0.5/32 match ip sport 5432 0xffff flowid 1abc:1",
            ]
        );
    }
}
