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
    RootQdisc, ensure_default_root, preview_device, tc_delete_root, tc_handle, u32_filters,
};
pub(crate) use values::{
    BitRate, Cidr, Direction, MatchTable, NetMatch, TcMatch, device, tc_match,
};
