//! Owns `latency` with `backend = "netem"`: delay (and optionally lose, duplicate, corrupt,
//! reorder) what leaves a device with the kernel's netem — at the root for a whole device, or as
//! the leaf of an htb class with u32 filters for a match — after checking the kernel has netem.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Context;
use super::net::{
    Cmd, Failure, MatchTable, RootQdisc, TcMatch, device, tc_handle, tc_match, u32_filters,
};
use crate::units::{Dur, Percent, format_ms};

/// The keys of a `latency` table with `backend = "netem"`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    device: Option<String>,
    #[serde(rename = "match")]
    matching: Option<MatchTable>,
    delay: Option<Dur>,
    jitter: Option<Dur>,
    correlation: Option<Percent>,
    distribution: Option<Distribution>,
    loss: Option<Percent>,
    duplicate: Option<Percent>,
    corrupt: Option<Percent>,
    reorder: Option<Percent>,
}

impl Table {
    pub(crate) fn validate(self) -> Result<NetemLatency, super::FieldError> {
        let device = device("latency", self.device)?;
        let Some(delay) = self.delay else {
            return Err(super::FieldError::raw(
                "delay",
                "latency with backend = \"netem\" needs `delay`, e.g. `delay = \"100ms\"`"
                    .to_owned(),
            ));
        };
        Ok(NetemLatency {
            device,
            matching: tc_match(self.matching)?,
            delay: delay.0,
            jitter: self.jitter.map(|j| j.0),
            correlation: self.correlation.map(|p| p.0),
            distribution: self.distribution,
            loss: self.loss.map(|p| p.0),
            duplicate: self.duplicate.map(|p| p.0),
            corrupt: self.corrupt.map(|p| p.0),
            reorder: self.reorder.map(|p| p.0),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetemLatency {
    pub(crate) device: String,
    #[serde(rename = "match", default)]
    pub(crate) matching: TcMatch,
    pub(crate) delay: Duration,
    pub(crate) jitter: Option<Duration>,
    /// How much each jitter draw depends on the previous one, a fraction.
    pub(crate) correlation: Option<f64>,
    pub(crate) distribution: Option<Distribution>,
    pub(crate) loss: Option<f64>,
    pub(crate) duplicate: Option<f64>,
    pub(crate) corrupt: Option<f64>,
    pub(crate) reorder: Option<f64>,
}

/// The shape of the jitter, as netem names its tables (uniform, the default, needs none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Distribution {
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

impl Distribution {
    fn as_str(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Normal => "normal",
            Distribution::Pareto => "pareto",
            Distribution::Paretonormal => "paretonormal",
        }
    }
}

/// A time as tc reads it: whole milliseconds, else microseconds.
fn tc_time(d: Duration) -> String {
    if d.as_micros() % 1000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

impl NetemLatency {
    pub(crate) fn describe(&self) -> String {
        let scope = if self.matching.is_empty() {
            "everything".to_owned()
        } else {
            self.matching.to_string()
        };
        let jitter = self
            .jitter
            .map_or_else(String::new, |j| format!(" ± {}", format_ms(j)));
        format!(
            "delay {scope} leaving {} by {}{jitter} with netem (`{}`; a root qdisc of its own, deleted on revert)",
            self.device,
            format_ms(self.delay),
            self.netem_args().join(" ")
        )
    }

    /// The netem options, in the order tc-netem(8) documents them.
    fn netem_args(&self) -> Vec<String> {
        let mut args = vec!["delay".to_owned(), tc_time(self.delay)];
        if let Some(jitter) = self.jitter {
            args.push(tc_time(jitter));
            if let Some(c) = self.correlation {
                args.push(Percent(c).to_string());
            }
            // Uniform is netem's own default and has no table file, so it is never named.
            if let Some(d) = self.distribution.filter(|d| *d != Distribution::Uniform) {
                args.extend(["distribution".to_owned(), d.as_str().to_owned()]);
            }
        }
        for (name, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("reorder", self.reorder),
        ] {
            if let Some(v) = value {
                args.extend([name.to_owned(), Percent(v).to_string()]);
            }
        }
        args
    }

    /// The exact tc commands the fault runs, in order.
    pub(crate) fn commands(&self, handle: u16) -> (&'static str, Vec<Cmd>) {
        let dev = self.device.as_str();
        let root = format!("{handle:x}:");
        let netem = self.netem_args();
        let with_netem = |head: &[&str]| {
            let mut cmd = Cmd::new("tc", head);
            cmd.args.extend(netem.iter().cloned());
            cmd
        };
        if self.matching.is_empty() {
            return (
                "netem",
                vec![with_netem(&[
                    "qdisc", "add", "dev", dev, "root", "handle", &root, "netem",
                ])],
            );
        }
        let class = format!("{handle:x}:1");
        let leaf = format!("{:x}:", handle + 1);
        let mut cmds = vec![
            // No `default`: traffic no filter claims goes straight out, undelayed.
            Cmd::new(
                "tc",
                &["qdisc", "add", "dev", dev, "root", "handle", &root, "htb"],
            ),
            // The class only routes to netem; its rate is far above any link so it shapes nothing.
            Cmd::new(
                "tc",
                &[
                    "class", "add", "dev", dev, "parent", &root, "classid", &class, "htb", "rate",
                    "100gbit",
                ],
            ),
            with_netem(&[
                "qdisc", "add", "dev", dev, "parent", &class, "handle", &leaf, "netem",
            ]),
        ];
        cmds.extend(u32_filters(dev, handle, &self.matching, &class));
        ("htb", cmds)
    }

    /// Whether the fault could be injected now: the kernel check (in a scratch namespace, so
    /// nothing on the host changes) and the device's root qdisc.
    pub(crate) fn preview(&self) -> String {
        match self.check_kernel() {
            Ok(()) => super::net::preview_device(&self.device),
            Err(e) => e,
        }
    }

    fn check_kernel(&self) -> Result<(), String> {
        check_kernel(!self.matching.is_empty(), &self.netem_args().join(" "))
    }

    /// Bounds that hold on any host; run by `validate` and by the agent on every request.
    pub(crate) fn check(&self) -> super::check::Checked {
        use super::check::{FieldError, hold, share, share_or_zero};
        super::check::device_name(&self.device)?;
        super::bandwidth::check_tc_match(&self.matching)?;
        hold("delay", self.delay)?;
        if let Some(jitter) = self.jitter {
            hold("jitter", jitter)?;
        } else if self.correlation.is_some() || self.distribution.is_some() {
            return Err(FieldError::raw(
                "jitter",
                "`correlation` and `distribution` shape the jitter, so they need `jitter`"
                    .to_owned(),
            ));
        }
        if let Some(c) = self.correlation {
            share_or_zero("correlation", c)?;
        }
        for (field, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("reorder", self.reorder),
        ] {
            if let Some(v) = value {
                share(field, v)?;
            }
        }
        Ok(())
    }

    /// The exact tc commands, for `plan`. Pure.
    pub(crate) fn changes(&self, fault_id: &str) -> String {
        super::net::lines(&self.commands(tc_handle(fault_id)).1)
    }

    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<RootQdisc, String> {
        super::net::refuse_control_port(self.matching.port, ctx.control_port)?;
        self.check_kernel()?;
        super::net::prepare_root(
            &self.device,
            self.matching.is_empty(),
            ctx.control_port,
            ctx.fault_id,
            |handle| self.commands(handle),
        )
    }
}

/// Checks that the kernel has the qdiscs the fault needs by adding them — with the fault's own
/// netem options, so a missing distribution table shows up here too — to the loopback device of a
/// scratch network namespace (`unshare --net`), which vanishes when the check exits: nothing on
/// the host changes, and the answer is the kernel's own (built in, or a module it can load).
fn check_kernel(needs_htb: bool, netem_args: &str) -> Result<(), String> {
    let lines: Vec<(&str, String)> = if needs_htb {
        vec![
            ("htb", "qdisc add dev lo root handle 1: htb".to_owned()),
            (
                "htb",
                "class add dev lo parent 1: classid 1:1 htb rate 100gbit".to_owned(),
            ),
            (
                "netem",
                format!("qdisc add dev lo parent 1:1 handle 2: netem {netem_args}"),
            ),
        ]
    } else {
        vec![(
            "netem",
            format!("qdisc add dev lo root handle 1: netem {netem_args}"),
        )]
    };
    let batch = lines
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let Err(e) = Cmd::new("unshare", &["--net", "--", "tc", "-batch", "-"]).run(Some(&batch))
    else {
        return Ok(());
    };
    if e.failure() != Failure::UnknownQdisc {
        return Err(format!(
            "the netem check in a scratch network namespace failed, so nothing was changed: {e}"
        ));
    }
    let e = e.to_string();
    // tc names the failing batch line as `-:N`.
    let failed = lines
        .iter()
        .enumerate()
        .find(|(i, _)| e.contains(&format!("-:{}", i + 1)))
        .map_or("netem", |(_, (qdisc, _))| *qdisc);
    Err(format!(
        "{failed} is unavailable on this kernel (`tc qdisc add ... {failed}` answers \"Specified qdisc kind is unknown\"): \
         nothing was changed; use `backend = \"proxy\"` (the userspace latency proxy, with `listen` and `upstream`) instead"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netem(matching: TcMatch) -> NetemLatency {
        NetemLatency {
            device: "eth0".into(),
            matching,
            delay: Duration::from_millis(100),
            jitter: Some(Duration::from_micros(2500)),
            correlation: Some(0.25),
            distribution: Some(Distribution::Normal),
            loss: Some(0.01),
            duplicate: Some(0.005),
            corrupt: Some(0.001),
            reorder: Some(0.1),
        }
    }

    fn commands(f: &NetemLatency) -> Vec<String> {
        f.commands(0x1abc)
            .1
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_whole_device_gets_netem_at_the_root_with_every_parameter() {
        assert_eq!(
            commands(&netem(TcMatch::default())),
            [
                "tc qdisc add dev eth0 root handle 1abc: netem delay 100ms 2500us 25% distribution normal loss 1% duplicate 0.5% corrupt 0.1% reorder 10%"
            ]
        );
    }

    #[test]
    fn a_match_gets_netem_below_an_htb_class() {
        let f = netem(TcMatch {
            dst: None,
            src: Some("10.0.0.0/24".parse().unwrap()),
            port: None,
        });
        assert_eq!(
            commands(&f),
            [
                "tc qdisc add dev eth0 root handle 1abc: htb",
                "tc class add dev eth0 parent 1abc: classid 1abc:1 htb rate 100gbit",
                "tc qdisc add dev eth0 parent 1abc:1 handle 1abd: netem delay 100ms 2500us 25% distribution normal loss 1% duplicate 0.5% corrupt 0.1% reorder 10%",
                "tc filter add dev eth0 parent 1abc: protocol ip prio 1 u32 match ip src 10.0.0.0/24 flowid 1abc:1",
            ]
        );
        assert!(
            f.describe().starts_with(
                "delay packets from 10.0.0.0/24 leaving eth0 by 100 ms ± 2.5 ms with netem"
            ),
            "{}",
            f.describe()
        );
    }
}
