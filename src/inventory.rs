//! Owns the agent inventory (`--agents FILE`): which agents exist, how to trust and reach them
//! (CA, token, optional client certificate), DNS discovery, and the seeded choice of agents for
//! each target group of an experiment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::agent::{Credentials, RemoteAgent};
use crate::model::{Experiment, LOCAL_GROUP, TargetGroup};

/// The inventory file exactly as written; unknown keys are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// The CA that signed the agents' certificates; relative paths are relative to the inventory.
    ca: PathBuf,
    token_file: PathBuf,
    /// For agents started with `--client-ca` (mutual TLS).
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default)]
    agent: Vec<RawAgent>,
    /// `host:port` whose every A/AAAA record is an agent (a Kubernetes headless service).
    dns: Option<String>,
    /// Tags given to every agent found through `dns`.
    #[serde(default)]
    dns_tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    address: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug)]
pub(crate) struct Inventory {
    pub(crate) path: PathBuf,
    /// Sorted by name; names are unique.
    pub(crate) agents: Vec<Arc<RemoteAgent>>,
}

/// Reads an inventory and resolves its DNS entry, if any. Contacts no agent.
pub(crate) async fn load(path: &Path) -> Result<Inventory, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to read the agent inventory {}: {e}", path.display()))?;
    let raw: Raw = toml::from_str(&text)
        .map_err(|e| format!("invalid agent inventory {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let read = |p: &Path, what: &str| {
        let full = base.join(p);
        std::fs::read(&full).map_err(|e| {
            format!(
                "{}: failed to read the {what} {}: {e}",
                path.display(),
                full.display()
            )
        })
    };
    let token = String::from_utf8_lossy(&read(&raw.token_file, "token file")?)
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(format!(
            "{}: the token file {} is empty",
            path.display(),
            raw.token_file.display()
        ));
    }
    let identity_pem = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert, "client certificate")?;
            pem.push(b'\n');
            pem.extend(read(key, "client key")?);
            Some(pem)
        }
        (None, None) => None,
        _ => {
            return Err(format!(
                "{}: give both `client_cert` and `client_key`, or neither",
                path.display()
            ));
        }
    };
    let creds = Credentials {
        ca_pem: read(&raw.ca, "CA certificate")?,
        token,
        identity_pem,
    };
    let mut agents = Vec::new();
    for a in raw.agent {
        if a.name == LOCAL_GROUP || a.name.is_empty() {
            return Err(format!(
                "{}: `{}` cannot name an agent (`local` is the embedded agent)",
                path.display(),
                a.name
            ));
        }
        if !a.address.starts_with("https://") {
            return Err(format!(
                "{}: agent `{}`: `address` must be an https:// URL (got `{}`)",
                path.display(),
                a.name,
                a.address
            ));
        }
        agents.push(
            RemoteAgent::new(a.name, &a.address, a.tags, &creds, None)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        );
    }
    if let Some(dns) = &raw.dns {
        agents.extend(
            discover(dns, &raw.dns_tags, &creds)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
        );
    }
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = agents.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(format!(
            "{}: two agents are named `{}`: agent names must be unique",
            path.display(),
            w[0].name
        ));
    }
    if agents.is_empty() {
        return Err(format!(
            "{}: no agents: add `[[agent]]` entries or `dns = \"host:port\"`",
            path.display()
        ));
    }
    Ok(Inventory {
        path: path.to_owned(),
        agents: agents.into_iter().map(Arc::new).collect(),
    })
}

/// One agent per address the name resolves to. Each is reached at its own IP while TLS checks the
/// certificate against the service name, so one certificate serves the whole DaemonSet.
async fn discover(
    dns: &str,
    tags: &BTreeMap<String, String>,
    creds: &Credentials,
) -> Result<Vec<RemoteAgent>, String> {
    let (host, port) = dns
        .rsplit_once(':')
        .ok_or_else(|| format!("`dns = \"{dns}\"` must be host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("`dns = \"{dns}\"`: `{port}` is not a port"))?;
    let mut addrs: Vec<_> = tokio::net::lookup_host(dns)
        .await
        .map_err(|e| format!("failed to resolve `{dns}`: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("`{dns}` resolved to no address: no agents found"));
    }
    addrs
        .into_iter()
        .map(|addr| {
            let address = format!("https://{host}:{port}");
            RemoteAgent::new(
                addr.ip().to_string(),
                &address,
                tags.clone(),
                creds,
                Some((host.to_owned(), addr)),
            )
        })
        .collect()
}

/// The agents each target group resolved to, for one seed.
#[derive(Debug)]
pub(crate) struct Selection {
    pub(crate) groups: BTreeMap<String, GroupChoice>,
}

#[derive(Debug)]
pub(crate) struct GroupChoice {
    /// Every agent whose tags match.
    pub(crate) matching: Vec<Arc<RemoteAgent>>,
    /// The seeded choice among them, sorted by name.
    pub(crate) chosen: Vec<Arc<RemoteAgent>>,
}

/// Resolves every target group a fault uses. A group that matches no agent is an error: a chaos
/// run that silently acts on nothing would pass for the wrong reason.
pub(crate) fn select(
    exp: &Experiment,
    inventory: Option<&Inventory>,
    seed: u64,
) -> Result<Selection, String> {
    let mut groups = BTreeMap::new();
    for step in &exp.faults {
        if step.on == LOCAL_GROUP || groups.contains_key(&step.on) {
            continue;
        }
        let group = &exp.targets[&step.on];
        let Some(inventory) = inventory else {
            return Err(format!(
                "{}: fault `{}` targets group `{}`, which needs an agent inventory (--agents); without one only `local` exists",
                exp.file.display(),
                step.name,
                step.on
            ));
        };
        groups.insert(step.on.clone(), choose(&step.on, group, inventory, seed)?);
    }
    Ok(Selection { groups })
}

fn choose(
    name: &str,
    group: &TargetGroup,
    inventory: &Inventory,
    seed: u64,
) -> Result<GroupChoice, String> {
    let matching: Vec<Arc<RemoteAgent>> = inventory
        .agents
        .iter()
        .filter(|a| group.tags.iter().all(|(k, v)| a.tags.get(k) == Some(v)))
        .cloned()
        .collect();
    if matching.is_empty() {
        let tags: Vec<String> = group.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(format!(
            "target group `{name}` (tags {}) matches none of the {} agent(s) in {}; refusing to run",
            if tags.is_empty() {
                "none".to_owned()
            } else {
                tags.join(", ")
            },
            inventory.agents.len(),
            inventory.path.display()
        ));
    }
    let mut chosen = matching.clone();
    let wanted = group
        .pick
        .map_or(matching.len(), |p| p.how_many(matching.len()));
    let wanted = group.max.map_or(wanted, |max| wanted.min(max as usize));
    if wanted < matching.len() {
        // Seeded per group (seed mixed with the group's name), so adding a group to an experiment
        // does not change which agents another group picks for the same seed.
        crate::model::seeded_shuffle(&mut chosen, seed ^ fnv1a(name));
        chosen.truncate(wanted);
        chosen.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(GroupChoice { matching, chosen })
}

/// A stable 64-bit hash (FNV-1a): std's hasher may change between Rust releases, seeds must not.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An inventory of agents that are never contacted, for tests of selection and its rendering:
/// (name, role) pairs, each agent at `https://NAME.test:7443` tagged `role = ROLE`.
#[cfg(test)]
pub(crate) fn test_inventory(agents: &[(String, &str)]) -> Inventory {
    let dir = tempfile::tempdir().expect("temp dir");
    crate::certs::generate(dir.path(), &[]).expect("certificates");
    let creds = Credentials {
        ca_pem: std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"),
        token: "t".repeat(32),
        identity_pem: None,
    };
    let agents = agents
        .iter()
        .map(|(name, role)| {
            let tags = [("role".to_owned(), (*role).to_owned())].into();
            let address = format!("https://{name}.test:7443");
            Arc::new(RemoteAgent::new(name.clone(), &address, tags, &creds, None).expect("agent"))
        })
        .collect();
    Inventory {
        path: "inventory.toml".into(),
        agents,
    }
}

#[cfg(test)]
mod tests {
    use super::{Raw, fnv1a};

    #[test]
    fn the_example_inventories_are_valid() {
        let raw: Raw = toml::from_str(include_str!("../agents/inventory.toml")).unwrap();
        assert_eq!(raw.agent.len(), 3);
        let raw: Raw = toml::from_str(include_str!("../agents/kubernetes/inventory.toml")).unwrap();
        assert_eq!(
            raw.dns.as_deref(),
            Some("faultline-agent.chaos.svc.cluster.local:7443")
        );
    }

    fn fleet(n: usize) -> super::Inventory {
        super::test_inventory(&(0..n).map(|i| (format!("w{i}"), "web")).collect::<Vec<_>>())
    }

    fn group(
        tags: &[(&str, &str)],
        pick: Option<crate::model::Pick>,
        max: Option<u32>,
    ) -> crate::model::TargetGroup {
        let tags = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        crate::model::TargetGroup { tags, pick, max }
    }

    fn names(choice: &super::GroupChoice) -> Vec<String> {
        choice.chosen.iter().map(|a| a.name.clone()).collect()
    }

    #[test]
    fn groups_round_up_respect_the_cap_and_follow_the_seed() {
        use crate::model::Pick;
        let inv = fleet(5);
        let half = group(&[("role", "web")], Some(Pick::Percent(0.5)), None);
        let chosen = super::choose("web", &half, &inv, 7).unwrap();
        assert_eq!(
            (chosen.matching.len(), chosen.chosen.len()),
            (5, 3),
            "50% of 5 rounds up to 3"
        );
        assert_eq!(
            names(&chosen),
            names(&super::choose("web", &half, &inv, 7).unwrap()),
            "same seed, same agents"
        );
        assert_eq!(
            names(&chosen),
            ["w0", "w1", "w3"],
            "seed 7 chooses these agents in every build (ChaCha8)"
        );
        let seeds_differ = (0..20)
            .any(|s| names(&super::choose("web", &half, &inv, s).unwrap()) != names(&chosen));
        assert!(seeds_differ, "other seeds choose other agents");
        let capped = group(&[("role", "web")], Some(Pick::Percent(0.5)), Some(2));
        assert_eq!(
            super::choose("web", &capped, &inv, 7).unwrap().chosen.len(),
            2
        );
        let tiny = group(&[], Some(Pick::Percent(0.01)), None);
        assert_eq!(
            super::choose("web", &tiny, &inv, 7).unwrap().chosen.len(),
            1,
            "never zero"
        );
        let all = group(&[("role", "web")], None, None);
        assert_eq!(super::choose("web", &all, &inv, 7).unwrap().chosen.len(), 5);
        let none = group(&[("role", "db")], None, None);
        let e = super::choose("db", &none, &inv, 7).unwrap_err();
        assert_eq!(
            e,
            "target group `db` (tags role=db) matches none of the 5 agent(s) in inventory.toml; refusing to run"
        );
    }

    #[test]
    fn dns_discovery_makes_one_agent_per_address_checked_against_the_name() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::generate(dir.path(), &[]).unwrap();
        let creds = super::Credentials {
            ca_pem: std::fs::read(dir.path().join("ca.pem")).unwrap(),
            token: "t".repeat(32),
            identity_pem: None,
        };
        let tags = [("role".to_owned(), "node".to_owned())].into();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let agents = runtime
            .block_on(super::discover("localhost:7443", &tags, &creds))
            .unwrap();
        assert!(agents.iter().any(|a| a.name == "127.0.0.1"), "{agents:?}");
        assert!(
            agents
                .iter()
                .all(|a| a.address == "https://localhost:7443" && a.tags == tags)
        );
        let e = runtime
            .block_on(super::discover("localhost", &tags, &creds))
            .unwrap_err();
        assert!(e.contains("must be host:port"), "{e}");
    }

    #[test]
    fn group_hash_is_stable_across_builds() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
