//! Owns persistent named proxies: the `[[proxy]]` tables of `agent.toml` (`name`, `listen`,
//! `upstream`), which an agent opens when it starts and keeps for its whole life, like Toxiproxy's
//! proxies. Staging apps point at them permanently; a `latency` fault with `proxy = "NAME"` turns
//! toxics on in one for its duration.
//!
//! The agent's envelope parser (`agent/envelope.rs`) reads the `proxy` key with the rest of
//! `agent.toml` and checks it here; the daemon opens the proxies before it serves requests.

use std::net::SocketAddr;

use serde::Deserialize;

use super::registry;

/// One `[[proxy]]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersistentProxy {
    pub(crate) name: String,
    pub(crate) listen: SocketAddr,
    pub(crate) upstream: String,
}

/// `agent.toml`, seen only for its `[[proxy]]` tables.
#[cfg(test)]
#[derive(Deserialize)]
struct ProxiesOnly {
    #[serde(default)]
    proxy: Vec<PersistentProxy>,
}

/// Checks a persistent proxy name: a plain token, and never one a run proxy could take.
pub(crate) fn check_persistent_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(format!(
            "invalid proxy name `{name}`: use 1 to 64 of [A-Za-z0-9._-]"
        ));
    }
    if name.starts_with(super::RUN_PREFIX) {
        return Err(format!(
            "invalid proxy name `{name}`: names starting with `{}` are for the proxies of runs",
            super::RUN_PREFIX
        ));
    }
    Ok(())
}

/// Why a run may not open a proxy of some name.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunNameError {
    /// The name of one of the agent's persistent proxies: a run's revert or lapsed lease would
    /// close it until the agent restarts.
    #[error(
        "proxy `{0}` is one of this agent's persistent proxies: a run may neither open nor close it"
    )]
    Persistent(String),
    /// Outside the run proxies' own names, which persistent names can never take.
    #[error("invalid run proxy name `{name}`: the proxies of runs are named `{prefix}ADDRESS`")]
    NotARunName { name: String, prefix: &'static str },
}

/// Checks the name of a proxy a run asks to open: never a persistent proxy's, and always in the
/// run proxies' own namespace (`listen-…`), which [`check_persistent_name`] keeps persistent
/// names out of.
pub(crate) fn check_run_name(
    name: &str,
    persistent: &[PersistentProxy],
) -> Result<(), RunNameError> {
    if persistent.iter().any(|p| p.name == name) {
        return Err(RunNameError::Persistent(name.to_owned()));
    }
    if !name.starts_with(super::RUN_PREFIX) {
        return Err(RunNameError::NotARunName {
            name: name.to_owned(),
            prefix: super::RUN_PREFIX,
        });
    }
    Ok(())
}

/// Reads the `[[proxy]]` tables of an `agent.toml` text and checks them. (The agent's envelope
/// parser reads them as one of its own keys and calls [`check`].)
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Result<Vec<PersistentProxy>, String> {
    let file: ProxiesOnly = toml::from_str(text)
        .map_err(|e| format!("invalid [[proxy]] table: {}", e.message().trim()))?;
    check(&file.proxy)?;
    Ok(file.proxy)
}

/// Checks `[[proxy]]` tables: plain names, no name or listen address twice, `host:port` upstreams.
pub(crate) fn check(proxies: &[PersistentProxy]) -> Result<(), String> {
    for (i, p) in proxies.iter().enumerate() {
        check_persistent_name(&p.name)?;
        if proxies[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("two [[proxy]] tables are named `{}`", p.name));
        }
        if proxies[..i].iter().any(|q| q.listen == p.listen) {
            return Err(format!("two [[proxy]] tables listen on {}", p.listen));
        }
        if p.upstream
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!(
                "[[proxy]] `{}`: `upstream` must be `host:port` (got `{}`)",
                p.name, p.upstream
            ));
        }
    }
    Ok(())
}

/// Opens every persistent proxy; they stay until the process ends. Needs the async runtime.
pub(crate) fn open_all(proxies: &[PersistentProxy]) -> Result<Vec<String>, String> {
    proxies
        .iter()
        .map(|p| {
            registry()
                .open(&p.name, p.listen, &p.upstream)
                .map_err(|e| format!("[[proxy]] `{}`: {e}", p.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_are_read_from_agent_toml_whatever_else_it_holds() {
        let text = r#"
allowed_kinds = ["latency"]
[[proxy]]
name = "db"
listen = "127.0.0.1:15432"
upstream = "db.internal:5432"
"#;
        let proxies = parse(text).unwrap();
        assert_eq!(
            proxies,
            vec![PersistentProxy {
                name: "db".into(),
                listen: "127.0.0.1:15432".parse().unwrap(),
                upstream: "db.internal:5432".into()
            }]
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_proxy_tables_are_named() {
        let e = parse("[[proxy]]\nname = \"db\"\nlisten = \"localhost:1\"\nupstream = \"x:2\"\n")
            .unwrap_err();
        assert!(e.contains("invalid socket address"), "{e}");
        let e =
            parse("[[proxy]]\nname = \"listen-x\"\nlisten = \"127.0.0.1:1\"\nupstream = \"x:2\"\n")
                .unwrap_err();
        assert!(e.contains("are for the proxies of runs"), "{e}");
        let two = "[[proxy]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nupstream = \"x:2\"\n";
        let e = parse(&format!(
            "{two}{}",
            two.replace("127.0.0.1:1", "127.0.0.1:3")
        ))
        .unwrap_err();
        assert!(e.contains("two [[proxy]] tables are named `a`"), "{e}");
        let e = parse(
            "[[proxy]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\nupstream = \"x:2\"\ntypo = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `typo`"), "{e}");
    }
}
