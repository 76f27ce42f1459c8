//! Owns root-qdisc ownership: the handle a fault's qdisc takes (derived from its id), refusing a
//! device whose root someone else configured, adding and verifying the fault's root qdisc, deleting
//! it only if it is still ours, and the u32 filters that steer matched packets into it.

use std::fmt;

use serde::Deserialize;

use super::{Cidr, Cmd, Failure, TcMatch};

/// What `plan` can say about a device's qdiscs right now.
pub(crate) fn preview_device(device: &str) -> String {
    match ensure_default_root(device) {
        Ok(()) => {
            format!("{device} has the kernel's default root qdisc: the fault can take the root")
        }
        Err(e) => e,
    }
}

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
            if e.failure() == Failure::NoDevice {
                RootError::NoDevice
            } else {
                RootError::Other(e.to_string())
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
/// throw away their setup (the kernel's default qdiscs have handle `0:`). A root in the range of
/// faultline's handles is most likely another fault's, which this one must not share: two ids can
/// hash to one handle, and a revert deletes the root that has its handle.
pub(crate) fn ensure_default_root(device: &str) -> Result<(), String> {
    match tc_root(device) {
        Ok(None) => Ok(()),
        Ok(Some(q)) if q.handle == "0:" => Ok(()),
        Ok(Some(q)) if is_ours_by_range(&q.handle) => Err(format!(
            "refusing to change {device}: its root qdisc is `{} {}`, most likely another faultline fault's; \
             revert that fault first or pick another device",
            q.kind, q.handle
        )),
        Ok(Some(q)) => Err(format!(
            "refusing to change {device}: its root qdisc is `{} {}`, which faultline did not create; \
             remove it first or pick another device",
            q.kind, q.handle
        )),
        Err(RootError::NoDevice) => Err(format!("no network device `{device}` on this host")),
        Err(RootError::Other(e)) => Err(e),
    }
}

/// Whether a handle (`1abc:`) is in the range [`tc_handle`] gives faults.
fn is_ours_by_range(handle: &str) -> bool {
    handle
        .strip_suffix(':')
        .and_then(|major| u16::from_str_radix(major, 16).ok())
        .is_some_and(|major| (0x1000..0x1000 + 0x6ffe).contains(&major))
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

/// A root qdisc (and what hangs below it) decided but not yet added: what `bandwidth` and
/// `latency` with `backend = "netem"` prepare.
#[derive(Debug)]
pub(crate) struct RootQdisc {
    pub(crate) device: String,
    pub(crate) handle: u16,
    /// The kind of the root qdisc: what revert checks before deleting it.
    pub(crate) kind: &'static str,
    pub(crate) commands: Vec<Cmd>,
    /// Held from prepare to the end of verify: two faults of this agent on one device take turns,
    /// so the second sees the first's root qdisc and is refused before it adds anything. Without
    /// it both could pass the check, and when their handles collide (a hash of the id) the undo of
    /// the one whose `tc qdisc add` failed would delete the other's qdisc.
    pub(crate) _device_lock: crate::fault::serial::Held,
}

/// Prepares a root qdisc on `device` for the fault `fault_id`: waits for other faults of this
/// agent on the device, refuses a device whose root is not the kernel's default, and refuses a
/// whole-device fault (no match) when the agent has a control port, which the qdisc would shape
/// too: a 1kbit limit on the control port's device would cut off `halt` until the lease lapses.
pub(crate) fn prepare_root(
    device: &str,
    whole_device: bool,
    control_port: Option<u16>,
    fault_id: &str,
    commands: impl FnOnce(u16) -> (&'static str, Vec<Cmd>),
) -> Result<RootQdisc, String> {
    if let (true, Some(port)) = (whole_device, control_port) {
        return Err(format!(
            "refusing to shape all of {device}: this agent's control channel (TCP port {port}) may run over it and would be shaped too; add a `match` (`dst`, `src` or `port`) that leaves port {port} out"
        ));
    }
    let lock = crate::fault::serial::hold(format!("tc-root:{device}"));
    ensure_default_root(device)?;
    let handle = tc_handle(fault_id);
    let (kind, commands) = commands(handle);
    Ok(RootQdisc {
        device: device.to_owned(),
        handle,
        kind,
        commands,
        _device_lock: lock,
    })
}

impl RootQdisc {
    pub(crate) fn inject(&self) -> Result<String, String> {
        for cmd in &self.commands {
            cmd.run(None)?;
        }
        Ok(format!(
            "added {} qdisc {:x}: at the root of {} ({} tc command(s))",
            self.kind,
            self.handle,
            self.device,
            self.commands.len()
        ))
    }

    pub(crate) fn verify(&self) -> Result<String, String> {
        let ours = format!("{:x}:", self.handle);
        match tc_root(&self.device) {
            Ok(Some(q)) if q.kind == self.kind && q.handle == ours => Ok(format!(
                "{} {ours} is the root qdisc of {}",
                self.kind, self.device
            )),
            Ok(Some(q)) => Err(format!(
                "the root qdisc of {} is `{} {}` right after adding {} {ours}",
                self.device, q.kind, q.handle, self.kind
            )),
            Ok(None) => Err(format!(
                "{} has no root qdisc right after adding {} {ours}",
                self.device, self.kind
            )),
            Err(e) => Err(format!("failed to read the qdiscs of {}: {e}", self.device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_follow_the_fault_id() {
        let h = tc_handle("20261126T141500Z-ab12-0");
        assert!((0x1000..0x7ffe).contains(&h));
        assert_eq!(h, tc_handle("20261126T141500Z-ab12-0"));
        assert_ne!(h, tc_handle("20261126T141500Z-ab12-1"));
        assert!(is_ours_by_range(&format!("{h:x}:")));
        assert!(!is_ours_by_range("1:") && !is_ours_by_range("8001:") && !is_ours_by_range("0:"));
    }

    #[test]
    fn a_whole_device_fault_is_refused_when_the_agent_has_a_control_port() {
        let never =
            |_: u16| -> (&'static str, Vec<Cmd>) { unreachable!("no commands for a refusal") };
        let err = prepare_root("lo", true, Some(7443), "bw-1", never).unwrap_err();
        assert_eq!(
            err,
            "refusing to shape all of lo: this agent's control channel (TCP port 7443) may run over it and would be shaped too; add a `match` (`dst`, `src` or `port`) that leaves port 7443 out"
        );
        assert_eq!(
            super::super::refuse_control_port(Some(7443), Some(7443)).unwrap_err(),
            "refusing a fault on port 7443: it is this agent's control port, which network faults always leave alone, so the fault would do nothing"
        );
        assert_eq!(
            super::super::refuse_control_port(Some(80), Some(7443)),
            Ok(())
        );
        assert_eq!(super::super::refuse_control_port(Some(7443), None), Ok(()));
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
