//! Owns what the kernel network faults share: addresses and matches, bit rates, running `nft` and
//! `tc` with an argument vector (never a shell), and reading which qdisc sits at a device's root.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address or a network: `10.0.0.5`, `10.0.1.0/24`, `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    pub(crate) fn is_ipv6(self) -> bool {
        self.addr.is_ipv6()
    }

    fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv6() { 128 } else { 32 }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid address `{s}`: {why}; write e.g. `10.0.0.5`, `10.0.1.0/24` or `fd00::/8`"
            )
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = Cidr::max_prefix(addr);
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("the prefix length is out of range"))?,
        };
        let network = mask(addr, prefix);
        if network != addr {
            // nft and tc would silently widen or reject it; say which network was probably meant.
            return Err(format!(
                "invalid address `{s}`: host bits are set after the /{prefix}; did you mean `{network}/{prefix}`?"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == Cidr::max_prefix(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// A rate in bits per second, written the way `tc` reads it: `1mbit`, `500kbit`, `1gbit`, `64kbps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BitRate(pub(crate) u64);

impl FromStr for BitRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid rate `{s}`: write a whole number with a unit, e.g. `1mbit`, `500kbit`, `1gbit` or `64kbps` (bytes)"
            )
        };
        let (n, unit) = crate::units::number_and_unit(s).ok_or_else(bad)?;
        // The units of tc(8): SI multiples; `bps` means bytes per second.
        let bits_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            "bps" => 8,
            "kbps" => 8_000,
            "mbps" => 8_000_000,
            "gbps" => 8_000_000_000,
            _ => return Err(bad()),
        };
        match n.checked_mul(bits_per_unit) {
            Some(0) => Err(format!(
                "invalid rate `{s}`: a rate of zero would stop all traffic; use `partition` for that"
            )),
            Some(bits) => Ok(BitRate(bits)),
            None => Err(bad()),
        }
    }
}

impl fmt::Display for BitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b % 1_000_000_000 == 0 => write!(f, "{}gbit", b / 1_000_000_000),
            b if b % 1_000_000 == 0 => write!(f, "{}mbit", b / 1_000_000),
            b if b % 1_000 == 0 => write!(f, "{}kbit", b / 1_000),
            b => write!(f, "{b}bit"),
        }
    }
}

crate::units::serde_via_str!(Cidr, BitRate);

/// Which packets a firewall fault acts on, relative to this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    /// Packets this host sends.
    Egress,
    /// Packets this host receives.
    Ingress,
    /// Both; see [`NetMatch`] for how `dst` and `src` read on the way in.
    #[default]
    Both,
}

/// The packets a `network-loss` fault drops.
///
/// `dst` and `src` are the packet's own destination and source addresses. With
/// `direction = "both"`, incoming packets are matched mirrored — those coming back from `dst` to
/// `src` — so one match describes both halves of a conversation. `port` matches either the source
/// or the destination port, TCP or UDP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetMatch {
    pub(crate) dst: Option<Cidr>,
    pub(crate) src: Option<Cidr>,
    pub(crate) port: Option<u16>,
    pub(crate) direction: Direction,
}

impl fmt::Display for NetMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(dst) = self.dst {
            parts.push(format!("to {dst}"));
        }
        if let Some(src) = self.src {
            parts.push(format!("from {src}"));
        }
        if let Some(port) = self.port {
            parts.push(format!("on port {port}"));
        }
        let described = if parts.is_empty() {
            String::new()
        } else {
            format!(" {}", parts.join(" "))
        };
        match self.direction {
            Direction::Egress => write!(f, "outgoing packets{described}"),
            Direction::Ingress => write!(f, "incoming packets{described}"),
            Direction::Both if self.dst.is_some() || self.src.is_some() => {
                write!(f, "packets{described}, and the incoming ones back")
            }
            Direction::Both => write!(f, "packets{described} in both directions"),
        }
    }
}

/// `match = { dst, src, port, direction }` of the network faults, as written; which keys apply
/// is decided by the kind that reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchTable {
    pub(crate) dst: Option<Cidr>,
    pub(crate) src: Option<Cidr>,
    pub(crate) port: Option<u16>,
    pub(crate) direction: Option<Direction>,
}

/// `device = "eth0"`, which the tc kinds need.
pub(crate) fn device(kind: &str, device: Option<String>) -> Result<String, super::FieldError> {
    device.ok_or_else(|| {
        super::FieldError::raw(
            "device",
            format!(
                "kind `{kind}` needs `device`, the network interface, e.g. `device = \"eth0\"`"
            ),
        )
    })
}

/// The match of a tc fault: tc shapes what leaves a device, so only egress makes sense.
pub(crate) fn tc_match(m: Option<MatchTable>) -> Result<TcMatch, super::FieldError> {
    let Some(m) = m else {
        return Ok(TcMatch::default());
    };
    if m.direction.is_some_and(|d| d != Direction::Egress) {
        return Err(super::FieldError::raw(
            "match",
            "tc acts on what leaves `device`, so `direction` can only be \"egress\" here"
                .to_owned(),
        ));
    }
    if m.dst.is_none() && m.src.is_none() && m.port.is_none() {
        return Err(super::FieldError::raw(
            "match",
            "`match` needs at least one of `dst`, `src` or `port`; leave it out to act on the whole device".to_owned(),
        ));
    }
    Ok(TcMatch {
        dst: m.dst,
        src: m.src,
        port: m.port,
    })
}

/// The packets a tc fault shapes. tc acts on what leaves a device, so there is no direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcMatch {
    pub(crate) dst: Option<Cidr>,
    pub(crate) src: Option<Cidr>,
    pub(crate) port: Option<u16>,
}

impl TcMatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.dst.is_none() && self.src.is_none() && self.port.is_none()
    }
}

impl fmt::Display for TcMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(dst) = self.dst {
            parts.push(format!("to {dst}"));
        }
        if let Some(src) = self.src {
            parts.push(format!("from {src}"));
        }
        if let Some(port) = self.port {
            parts.push(format!("on port {port}"));
        }
        if parts.is_empty() {
            f.write_str("all packets")
        } else {
            write!(f, "packets {}", parts.join(" "))
        }
    }
}

/// One program run with an argument vector, printable for `plan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cmd {
    pub(crate) program: &'static str,
    pub(crate) args: Vec<String>,
}

impl Cmd {
    pub(crate) fn new(program: &'static str, args: &[&str]) -> Cmd {
        Cmd {
            program,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Runs the program, feeding `stdin` if given, and returns its standard output.
    pub(crate) fn run(&self, stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new(self.program)
            .args(&self.args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let hint = match self.program {
                    "nft" => " (is the `nftables` package installed?)",
                    "tc" | "ip" => " (is the `iproute2` package installed?)",
                    _ => "",
                };
                format!("failed to run `{}`: {e}{hint}", self.program)
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| format!("failed to feed `{self}`: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("failed to wait for `{self}`: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "`{self}` failed ({}): {}",
                out.status,
                one_line(&stderr)
            ))
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// Joins the lines of a program's error output, so a message stays one line.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

// --- nftables ---

/// The nft table a fault owns, named after the fault id so that revert deletes exactly it.
pub(crate) fn nft_table(fault_id: &str) -> String {
    let id: String = fault_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("faultline_{id}")
}

/// One base chain of a fault's table: the hook, then the rules in order.
pub(crate) struct Chain {
    pub(crate) hook: &'static str,
    pub(crate) rules: Vec<String>,
}

/// Renders a whole table as `nft -f` reads it. The control channel's port, when the agent has one,
/// is accepted first in every chain, so the fault never cuts the agent off from its coordinator.
pub(crate) fn nft_ruleset(table: &str, control_port: Option<u16>, chains: &[Chain]) -> String {
    let mut out = format!("table inet {table} {{\n");
    for chain in chains {
        out.push_str(&format!("\tchain {} {{\n", chain.hook));
        // A drop in any base chain is final and an accept only ends its own chain, so other
        // tables cannot let dropped packets through; -10 runs ahead of the common filter chains
        // (priority 0) so that theirs see only the packets the fault let pass.
        out.push_str(&format!(
            "\t\ttype filter hook {} priority -10; policy accept;\n",
            chain.hook
        ));
        if let Some(port) = control_port {
            out.push_str(&format!(
                "\t\ttcp dport {port} accept\n\t\ttcp sport {port} accept\n"
            ));
        }
        for rule in &chain.rules {
            out.push_str(&format!("\t\t{rule}\n"));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

/// `ip` or `ip6`, the nft payload family of an address.
pub(crate) fn family(addr: Cidr) -> &'static str {
    if addr.is_ipv6() { "ip6" } else { "ip" }
}

/// A fault's own nft table, decided but not yet added: what `network-loss` and `partition` prepare.
#[derive(Debug)]
pub(crate) struct NftTable {
    pub(crate) table: String,
    pub(crate) ruleset: String,
}

impl NftTable {
    pub(crate) fn inject(&self) -> Result<String, String> {
        nft_apply(&self.ruleset)?;
        Ok(format!("added nft table inet {}", self.table))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        if nft_table_exists(&self.table)? {
            Ok(format!("nft table inet {} is in place", self.table))
        } else {
            Err(format!(
                "nft table inet {} is missing right after it was added",
                self.table
            ))
        }
    }
}

/// A set in nft syntax: a bare element when there is one, `{ a, b }` otherwise.
pub(crate) fn nft_set<T: fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        many => format!(
            "{{ {} }}",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(crate) fn nft_apply(ruleset: &str) -> Result<(), String> {
    Cmd::new("nft", &["-f", "-"]).run(Some(ruleset)).map(drop)
}

pub(crate) fn nft_table_exists(table: &str) -> Result<bool, String> {
    match Cmd::new("nft", &["list", "table", "inet", table]).run(None) {
        Ok(_) => Ok(true),
        Err(e) if e.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes a fault's table. A table that is already gone counts as deleted.
pub(crate) fn nft_delete_table(table: &str) -> Result<String, String> {
    if !nft_table_exists(table)? {
        return Ok(format!("nft table inet {table} was already gone"));
    }
    match Cmd::new("nft", &["delete", "table", "inet", table]).run(None) {
        Ok(_) => Ok(format!("deleted nft table inet {table}")),
        // Someone else deleted it between the check and the delete: the fault is gone either way.
        Err(e) if e.contains("No such file or directory") => {
            Ok(format!("nft table inet {table} was already gone"))
        }
        Err(e) => Err(e),
    }
}

/// What `plan` can say about the host's firewall right now.
pub(crate) fn preview_nft() -> String {
    match Cmd::new("nft", &["list", "tables"]).run(None) {
        Ok(out) => {
            let ours = out.lines().filter(|l| l.contains(" faultline_")).count();
            format!(
                "nft works; {} table(s) now, {ours} of them faultline's",
                out.lines().count()
            )
        }
        Err(e) => e,
    }
}

/// What `plan` can say about a device's qdiscs right now.
pub(crate) fn preview_device(device: &str) -> String {
    match ensure_default_root(device) {
        Ok(()) => {
            format!("{device} has the kernel's default root qdisc: the fault can take the root")
        }
        Err(e) => e,
    }
}

// --- tc ---

/// A qdisc handle major this fault owns, derived from the fault id so that a revert after a crash
/// recognises exactly the qdisc its own fault added. Kept in 1000:..7ffd: (and the netem leaf one
/// above), clear of the handles the kernel assigns by itself (8000: and up).
pub(crate) fn tc_handle(fault_id: &str) -> u16 {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in fault_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    0x1000 + (hash % 0x6ffe) as u16
}

/// A qdisc as `tc -j qdisc show` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct Qdisc {
    pub(crate) kind: String,
    pub(crate) handle: String,
    #[serde(default)]
    pub(crate) root: bool,
}

/// Why the root qdisc of a device could not be read.
#[derive(Debug)]
pub(crate) enum RootError {
    NoDevice,
    Other(String),
}

impl fmt::Display for RootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootError::NoDevice => f.write_str("no such network device"),
            RootError::Other(e) => f.write_str(e),
        }
    }
}

/// The qdisc at the root of `device`, or `None` when the device has none listed.
pub(crate) fn tc_root(device: &str) -> Result<Option<Qdisc>, RootError> {
    let out = Cmd::new("tc", &["-j", "qdisc", "show", "dev", device])
        .run(None)
        .map_err(|e| {
            if e.contains("Cannot find device") {
                RootError::NoDevice
            } else {
                RootError::Other(e)
            }
        })?;
    let list: Vec<Qdisc> = serde_json::from_str(out.trim()).map_err(|e| {
        RootError::Other(format!(
            "failed to read `tc -j qdisc show dev {device}`: {e}"
        ))
    })?;
    Ok(list.into_iter().find(|q| q.root))
}

/// Refuses a device whose root qdisc someone configured: replacing or later deleting it would
/// throw away their setup (the kernel's default qdiscs have handle `0:`).
pub(crate) fn ensure_default_root(device: &str) -> Result<(), String> {
    match tc_root(device) {
        Ok(None) => Ok(()),
        Ok(Some(q)) if q.handle == "0:" => Ok(()),
        Ok(Some(q)) => Err(format!(
            "refusing to change {device}: its root qdisc is `{} {}`, which faultline did not create; \
             remove it first or pick another device",
            q.kind, q.handle
        )),
        Err(RootError::NoDevice) => Err(format!("no network device `{device}` on this host")),
        Err(RootError::Other(e)) => Err(e),
    }
}

/// Deletes the root qdisc of `device` if and only if it is the one the fault added (same handle
/// and kind). Never deletes a root qdisc we did not create (pumba#166): the kernel itself checks
/// the handle on `tc qdisc del ... root handle H:`, so a race with someone else's change fails
/// instead of deleting their qdisc.
pub(crate) fn tc_delete_root(device: &str, handle: u16, kind: &str) -> Result<String, String> {
    let ours = format!("{handle:x}:");
    match tc_root(device) {
        Err(RootError::NoDevice) => Ok(format!("device {device} is gone, and its qdiscs with it")),
        Err(RootError::Other(e)) => Err(e),
        Ok(Some(q)) if q.handle == ours && q.kind == kind => {
            Cmd::new(
                "tc",
                &["qdisc", "del", "dev", device, "root", "handle", &ours],
            )
            .run(None)?;
            Ok(format!(
                "deleted {kind} qdisc {ours} at the root of {device}"
            ))
        }
        Ok(Some(q)) if q.handle != "0:" => Ok(format!(
            "the root qdisc of {device} is now `{} {}`, not ours ({kind} {ours}): left alone",
            q.kind, q.handle
        )),
        Ok(_) => Ok(format!("{kind} qdisc {ours} on {device} was already gone")),
    }
}

/// The u32 filters that send the matched packets to `flowid`; `m` must not be empty. A port
/// matches either the source or the destination port, so a port needs two filters, and with no
/// address both IPv4 and IPv6. u32 finds ports at a fixed offset, so packets with IP options
/// (rare) are not matched by port.
pub(crate) fn u32_filters(device: &str, parent: u16, m: &TcMatch, flowid: &str) -> Vec<Cmd> {
    let v6 = m.dst.or(m.src).map(Cidr::is_ipv6);
    let families: &[bool] = match v6 {
        Some(true) => &[true],
        Some(false) => &[false],
        None => &[false, true],
    };
    let parent = format!("{parent:x}:");
    let mut cmds = Vec::new();
    for &is_v6 in families {
        // The kernel keeps one protocol per filter priority, so IPv6 filters get a priority of their own.
        let (protocol, sel, prio) = if is_v6 {
            ("ipv6", "ip6", "2")
        } else {
            ("ip", "ip", "1")
        };
        let mut base: Vec<String> = Vec::new();
        if let Some(dst) = m.dst {
            base.extend([
                "match".into(),
                sel.into(),
                "dst".into(),
                format!("{}/{}", dst.addr, dst.prefix),
            ]);
        }
        if let Some(src) = m.src {
            base.extend([
                "match".into(),
                sel.into(),
                "src".into(),
                format!("{}/{}", src.addr, src.prefix),
            ]);
        }
        let port_matches: Vec<Vec<String>> = match m.port {
            Some(port) => ["dport", "sport"]
                .iter()
                .map(|side| {
                    vec![
                        "match".into(),
                        sel.into(),
                        (*side).to_owned(),
                        port.to_string(),
                        "0xffff".into(),
                    ]
                })
                .collect(),
            None => vec![Vec::new()],
        };
        for port_match in port_matches {
            let mut args: Vec<String> = [
                "filter", "add", "dev", device, "parent", &parent, "protocol", protocol, "prio",
                prio, "u32",
            ]
            .map(String::from)
            .to_vec();
            args.extend(base.iter().cloned());
            args.extend(port_match);
            args.extend(["flowid".to_owned(), flowid.to_owned()]);
            cmds.push(Cmd {
                program: "tc",
                args,
            });
        }
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_prefix() {
        assert_eq!("10.0.0.5".parse::<Cidr>().unwrap().to_string(), "10.0.0.5");
        assert_eq!(
            "10.0.1.0/24".parse::<Cidr>().unwrap().to_string(),
            "10.0.1.0/24"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!(
            "10.0.0.5/32".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.5"
        );
        let e = "10.0.1.7/24".parse::<Cidr>().unwrap_err();
        assert!(e.contains("did you mean `10.0.1.0/24`?"), "{e}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("db.internal".parse::<Cidr>().is_err());
    }

    #[test]
    fn rates_use_tc_units() {
        assert_eq!("1mbit".parse::<BitRate>().unwrap(), BitRate(1_000_000));
        assert_eq!("64kbps".parse::<BitRate>().unwrap(), BitRate(512_000));
        assert_eq!(BitRate(1_000_000).to_string(), "1mbit");
        assert_eq!(BitRate(512_000).to_string(), "512kbit");
        assert!("0mbit".parse::<BitRate>().unwrap_err().contains("zero"));
        assert!("1.5mbit".parse::<BitRate>().is_err());
        assert!("10 furlongs".parse::<BitRate>().is_err());
    }

    #[test]
    fn table_names_and_handles_follow_the_fault_id() {
        assert_eq!(
            nft_table("20261126T141500Z-ab12-0"),
            "faultline_20261126T141500Z_ab12_0"
        );
        let h = tc_handle("20261126T141500Z-ab12-0");
        assert!((0x1000..0x7ffe).contains(&h));
        assert_eq!(h, tc_handle("20261126T141500Z-ab12-0"));
        assert_ne!(h, tc_handle("20261126T141500Z-ab12-1"));
    }

    #[test]
    fn u32_filters_match_both_port_sides() {
        let m = TcMatch {
            dst: Some("10.0.0.0/24".parse().unwrap()),
            src: None,
            port: Some(5432),
        };
        let cmds: Vec<String> = u32_filters("eth0", 0x1abc, &m, "1abc:1")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            cmds,
            [
                "tc filter add dev eth0 parent 1abc: protocol ip prio 1 u32 match ip dst 10.0.0.0/24 match ip dport 5432 0xffff flowid 1abc:1",
                "tc filter add dev eth0 parent 1abc: protocol ip prio 1 u32 match ip dst 10.0.0.0/24 match ip sport 5432 0xffff flowid 1abc:1",
            ]
        );
        let m = TcMatch {
            dst: None,
            src: None,
            port: Some(80),
        };
        let cmds: Vec<String> = u32_filters("eth0", 0x1abc, &m, "1abc:1")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cmds.len(), 4);
        assert_eq!(
            cmds[3],
            "tc filter add dev eth0 parent 1abc: protocol ipv6 prio 2 u32 match ip6 sport 80 0xffff flowid 1abc:1"
        );
    }
}
