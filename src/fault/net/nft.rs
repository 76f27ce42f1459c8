//! Owns nftables: the table a fault owns (named after its id), its ruleset text, adding it,
//! checking it is there, and deleting it.

use std::fmt;

use super::{Cidr, Cmd, Failure};

/// The nft table a fault owns, named after the fault id so that revert deletes exactly it. The
/// id goes in as it is (`faultline_col-1`, `faultline_col.1`), so two ids never share a table:
/// nft names may hold letters, digits, `_`, `-` and `.` after their first letter, which is all a
/// fault id holds (`protocol::validate_fault_id`), and 128 of them fit nft's 255. Anything else
/// (never sent by a valid request) gets a name from its SHA-256 instead of being mangled.
pub(crate) fn nft_table(fault_id: &str) -> String {
    let plain = !fault_id.is_empty()
        && fault_id.len() <= 128
        && fault_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        return format!("faultline_{fault_id}");
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(fault_id.as_bytes());
    let mut hashed = String::from("faultline_invalid_");
    for byte in digest {
        hashed.push_str(&format!("{byte:02x}"));
    }
    hashed
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
    Ok(Cmd::new("nft", &["-f", "-"]).run(Some(ruleset)).map(drop)?)
}

pub(crate) fn nft_table_exists(table: &str) -> Result<bool, String> {
    match Cmd::new("nft", &["list", "table", "inet", table]).run(None) {
        Ok(_) => Ok(true),
        Err(e) if e.failure() == Failure::NoSuchObject => Ok(false),
        Err(e) => Err(e.into()),
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
        Err(e) if e.failure() == Failure::NoSuchObject => {
            Ok(format!("nft table inet {table} was already gone"))
        }
        Err(e) => Err(e.into()),
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
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_the_fault_id() {
        assert_eq!(
            nft_table("20261126T141500Z-ab12-0"),
            "faultline_20261126T141500Z-ab12-0"
        );
    }

    #[test]
    fn ids_that_differ_only_in_punctuation_get_tables_of_their_own() {
        let ids = [
            "col-1", "col.1", "col_1", "col_2d1", "col1", "col-_1", "col_-1",
        ];
        let names: std::collections::HashSet<String> = ids.iter().map(|id| nft_table(id)).collect();
        assert_eq!(names.len(), ids.len(), "{names:?}");
        // nft's limit is 255 characters (NFT_TABLE_MAXNAMELEN 256 with the NUL).
        assert!(nft_table(&"a".repeat(128)).len() <= 255);
        assert!(nft_table("a b").starts_with("faultline_invalid_"));
        assert_ne!(nft_table("a b"), nft_table("a\tb"));
    }
}
