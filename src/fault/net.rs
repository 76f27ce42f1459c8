//! Owns what the kernel network faults share, one file per concern: value types (`values.rs`),
//! running tools with typed errors (`cmd.rs`), nftables tables (`nft.rs`) and root-qdisc ownership
//! (`tc.rs`).

mod cmd;
mod nft;
mod tc;
mod values;

pub(crate) use cmd::{Cmd, Failure, lines};
pub(crate) use nft::{
    Chain, NftTable, family, nft_delete_table, nft_ruleset, nft_set, nft_table, preview_nft,
};
pub(crate) use tc::{
    RootQdisc, prepare_root, preview_device, tc_delete_root, tc_handle, u32_filters,
};
pub(crate) use values::{
    BitRate, Cidr, Direction, MatchTable, NetMatch, TcMatch, device, tc_match,
};

/// Refuses a network fault whose match is exactly the agent's control port: the agent always
/// exempts that port, so the fault would be "applied" and do nothing.
pub(crate) fn refuse_control_port(port: Option<u16>, control: Option<u16>) -> Result<(), String> {
    match (port, control) {
        (Some(p), Some(c)) if p == c => Err(format!(
            "refusing a fault on port {p}: it is this agent's control port, which network faults always leave alone, so the fault would do nothing"
        )),
        _ => Ok(()),
    }
}
