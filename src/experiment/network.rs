//! Owns the validation of the kernel network faults: `network-loss`, `partition`, `bandwidth`, and
//! `latency` with `backend = "netem"`. Value syntaxes (addresses, rates) were checked by the parser.

use std::ops::Range;

use super::{VResult, Validator, raw};
use crate::fault::{
    Bandwidth, Cidr, Direction, NetMatch, NetemLatency, NetworkLoss, Partition, TcMatch,
};

/// The keys of `latency` with `backend = "netem"`.
pub(super) const NETEM_KEYS: &[&str] = &[
    "backend",
    "device",
    "match",
    "delay",
    "jitter",
    "correlation",
    "distribution",
    "loss",
    "duplicate",
    "corrupt",
    "reorder",
    "duration",
];

impl Validator<'_> {
    pub(super) fn network_loss(
        &self,
        span: Range<usize>,
        name: &str,
        f: &raw::Fault,
    ) -> VResult<NetworkLoss> {
        let Some(percent) = f.percent else {
            return self.at(span, format!("fault `{name}`: network-loss needs `percent`, the share of matched packets to drop, e.g. `percent = \"30%\"`"));
        };
        let Some(m) = &f.matching else {
            return self.at(span, format!("fault `{name}`: network-loss needs `match` with at least one of `dst`, `src`, `port` or `direction`, e.g. `match = {{ port = 5432 }}`"));
        };
        let matching = NetMatch {
            dst: m.dst,
            src: m.src,
            port: m.port,
            direction: m.direction.unwrap_or_default(),
        };
        Ok(NetworkLoss {
            percent: percent.0,
            matching,
        })
    }

    pub(super) fn partition(
        &self,
        span: Range<usize>,
        name: &str,
        f: &raw::Fault,
    ) -> VResult<Partition> {
        let Some(peers) = f.peers.clone() else {
            return self.at(span, format!("fault `{name}`: partition needs `peers`, the addresses or networks to cut off, e.g. `peers = [\"10.0.0.5\", \"10.0.1.0/24\"]`"));
        };
        let ports = f.ports.clone().unwrap_or_default();
        if f.ports.is_some() && ports.is_empty() {
            return self.at(span, format!("fault `{name}`: `ports = []` would match nothing; leave `ports` out to cut off every port"));
        }
        Ok(Partition { peers, ports })
    }

    pub(super) fn bandwidth(
        &self,
        span: Range<usize>,
        name: &str,
        f: &raw::Fault,
    ) -> VResult<Bandwidth> {
        let device = self.device(span.clone(), name, f)?;
        let Some(rate) = f.rate else {
            return self.at(
                span,
                format!("fault `{name}`: bandwidth needs `rate`, e.g. `rate = \"1mbit\"`"),
            );
        };
        let matching = self.tc_match(span, name, f.matching.as_ref())?;
        Ok(Bandwidth {
            device,
            rate,
            matching,
        })
    }

    pub(super) fn netem_latency(
        &self,
        span: Range<usize>,
        name: &str,
        f: &raw::Fault,
    ) -> VResult<NetemLatency> {
        let device = self.device(span.clone(), name, f)?;
        let Some(delay) = f.delay else {
            return self.at(span, format!("fault `{name}`: latency with backend = \"netem\" needs `delay`, e.g. `delay = \"100ms\"`"));
        };
        if f.jitter.is_none() && (f.correlation.is_some() || f.distribution.is_some()) {
            return self.at(span, format!("fault `{name}`: `correlation` and `distribution` shape the jitter, so they need `jitter`"));
        }
        let matching = self.tc_match(span, name, f.matching.as_ref())?;
        Ok(NetemLatency {
            device,
            matching,
            delay: delay.0,
            jitter: f.jitter.map(|j| j.0),
            correlation: f.correlation.map(|p| p.0),
            distribution: f.distribution,
            loss: f.loss.map(|p| p.0),
            duplicate: f.duplicate.map(|p| p.0),
            corrupt: f.corrupt.map(|p| p.0),
            reorder: f.reorder.map(|p| p.0),
        })
    }

    /// A network device name as the kernel allows it. It becomes a `tc` argument, so one that
    /// starts with `-` (an option to tc) is refused too.
    fn device(&self, span: Range<usize>, name: &str, f: &raw::Fault) -> VResult<String> {
        let Some(device) = f.device.clone() else {
            return self.at(span, format!("fault `{name}`: kind `{}` needs `device`, the network interface, e.g. `device = \"eth0\"`", f.kind));
        };
        let valid = !device.is_empty()
            && device.len() <= 15
            && !device.starts_with('-')
            && device != "."
            && device != ".."
            && !device
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !valid {
            return self.at(span, format!("fault `{name}`: `{device}` is not a network device name (1 to 15 characters, no `/`, `:` or spaces, not starting with `-`)"));
        }
        Ok(device)
    }

    /// The match of a tc fault: tc shapes what leaves a device, so only egress makes sense.
    fn tc_match(
        &self,
        span: Range<usize>,
        name: &str,
        m: Option<&raw::NetMatch>,
    ) -> VResult<TcMatch> {
        let Some(m) = m else {
            return Ok(TcMatch::default());
        };
        if m.direction.is_some_and(|d| d != Direction::Egress) {
            return self.at(span, format!("fault `{name}`: tc acts on what leaves `device`, so `direction` can only be \"egress\" here"));
        }
        if m.dst.is_none() && m.src.is_none() && m.port.is_none() {
            return self.at(span, format!("fault `{name}`: `match` needs at least one of `dst`, `src` or `port`; leave it out to act on the whole device"));
        }
        self.same_family(span.clone(), name, m.dst, m.src)?;
        self.port(span, name, m.port)?;
        Ok(TcMatch {
            dst: m.dst,
            src: m.src,
            port: m.port,
        })
    }

    fn same_family(
        &self,
        span: Range<usize>,
        name: &str,
        dst: Option<Cidr>,
        src: Option<Cidr>,
    ) -> VResult<()> {
        match (dst, src) {
            (Some(d), Some(s)) if d.is_ipv6() != s.is_ipv6() => {
                self.at(span, format!("fault `{name}`: `dst` {d} and `src` {s} are of different IP versions, so no packet can match both"))
            }
            _ => Ok(()),
        }
    }

    fn port(&self, span: Range<usize>, name: &str, port: Option<u16>) -> VResult<()> {
        if port == Some(0) {
            return self.at(
                span,
                format!("fault `{name}`: port 0 is not a port traffic uses"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::fault::FaultSpec;

    const HEAD: &str = r#"
title = "t"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "p"
tcp = "127.0.0.1:1"
[recovery]
within = "5s"
[[fault]]
name = "f"
duration = "5s"
"#;

    fn parse(fault: &str) -> Result<FaultSpec, String> {
        crate::experiment::parse(Path::new("x.toml"), &format!("{HEAD}{fault}"))
            .map(|e| e.faults.into_iter().next().unwrap().spec)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_keys_parse_for_every_network_kind() {
        let loss = parse("kind = \"network-loss\"\npercent = \"30%\"\nmatch = { dst = \"10.0.0.0/24\", port = 5432, direction = \"egress\" }\n").unwrap();
        assert_eq!(loss.kind(), "network-loss");
        let cut = parse(
            "kind = \"partition\"\npeers = [\"10.0.0.5\", \"10.0.1.0/24\"]\nports = [5432]\n",
        )
        .unwrap();
        assert_eq!(cut.kind(), "partition");
        let bw = parse(
            "kind = \"bandwidth\"\ndevice = \"eth0\"\nrate = \"1mbit\"\nmatch = { port = 80 }\n",
        )
        .unwrap();
        assert_eq!(bw.kind(), "bandwidth");
        let netem = parse("kind = \"latency\"\nbackend = \"netem\"\ndevice = \"eth0\"\ndelay = \"100ms\"\njitter = \"10ms\"\ncorrelation = \"25%\"\ndistribution = \"normal\"\nloss = \"1%\"\nduplicate = \"1%\"\ncorrupt = \"0.1%\"\nreorder = \"5%\"\nmatch = { dst = \"10.0.0.5\" }\n").unwrap();
        assert!(matches!(netem, FaultSpec::NetemLatency(_)), "{netem:?}");
    }

    #[test]
    fn bad_addresses_point_at_the_value() {
        let e =
            parse("kind = \"partition\"\npeers = [\"10.0.0.5\", \"10.0.1.7/24\"]\n").unwrap_err();
        assert!(e.contains("line 14, column 9"), "{e}");
        assert!(e.contains("did you mean `10.0.1.0/24`?"), "{e}");
    }

    #[test]
    fn network_faults_say_what_is_missing_or_wrong() {
        let e = parse("kind = \"network-loss\"\nmatch = { port = 1 }\n").unwrap_err();
        assert!(e.contains("network-loss needs `percent`"), "{e}");
        let e = parse("kind = \"network-loss\"\npercent = \"10%\"\nmatch = {}\n").unwrap_err();
        assert!(e.contains("`match` needs at least one of"), "{e}");
        let e = parse("kind = \"network-loss\"\npercent = \"10%\"\nmatch = { dport = 1 }\n")
            .unwrap_err();
        assert!(e.contains("unknown field `dport`"), "{e}");
        let e = parse("kind = \"bandwidth\"\ndevice = \"-batch\"\nrate = \"1mbit\"\n").unwrap_err();
        assert!(e.contains("is not a network device name"), "{e}");
        let e = parse("kind = \"bandwidth\"\ndevice = \"eth0\"\nrate = \"1mbit\"\nmatch = { port = 80, direction = \"ingress\" }\n").unwrap_err();
        assert!(e.contains("can only be \"egress\""), "{e}");
        let e =
            parse("kind = \"partition\"\npeers = [\"10.0.0.5\"]\nrate = \"1mbit\"\n").unwrap_err();
        assert!(
            e.contains("`rate` does not apply to kind `partition`"),
            "{e}"
        );
        let e = parse("kind = \"latency\"\nbackend = \"netem\"\ndevice = \"eth0\"\ndelay = \"10ms\"\ndistribution = \"normal\"\n").unwrap_err();
        assert!(e.contains("need `jitter`"), "{e}");
        let e = parse("kind = \"network-loss\"\npercent = \"10%\"\nmatch = { dst = \"10.0.0.1\", src = \"fd00::1\" }\n").unwrap_err();
        assert!(e.contains("different IP versions"), "{e}");
    }
}
