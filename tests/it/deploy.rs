//! The deployment files in `agents/`: every Kubernetes manifest parses (python3's `yaml`, a real
//! YAML parser) and wires what it declares (volumes, selectors, the coordinator's replicas and
//! storage), and the systemd units pass `systemd-analyze verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{AGENT_BIN, BIN, faultline, tempdir};

/// Every YAML document of `file`, as JSON (python3 with PyYAML reads it; scripts/setup.sh installs
/// it as python3-yaml).
fn documents(file: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
        ])
        .arg(file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} is not valid YAML: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("agents/kubernetes")
        .expect("agents/kubernetes exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The pod template of a workload (Deployment, DaemonSet, CronJob), if `doc` is one.
fn pod_template(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Deployment" | "DaemonSet" => Some(&doc["spec"]["template"]),
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]),
        _ => None,
    }
}

fn names(list: &Value) -> BTreeSet<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect()
}

#[test]
fn kubernetes_manifests_parse_and_mount_only_volumes_they_declare() {
    let files = manifests();
    let listed: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "coordinator-deployment.yaml",
        "coordinator-ha.yaml",
        "game-day-cronjob.yaml",
        "agent-daemonset.yaml",
    ] {
        assert!(
            listed.iter().any(|l| l == expected),
            "{expected} missing from {listed:?}"
        );
    }
    for file in &files {
        for doc in documents(file) {
            let what = format!("{} ({})", file.display(), doc["kind"]);
            assert_eq!(
                doc["metadata"]["namespace"].as_str().unwrap_or("chaos"),
                "chaos",
                "{what}"
            );
            let Some(template) = pod_template(&doc) else {
                continue;
            };
            let spec = &template["spec"];
            let declared = names(&spec["volumes"]);
            for container in spec["containers"].as_array().expect("containers") {
                for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                    let name = mount["name"].as_str().unwrap();
                    assert!(
                        declared.contains(name),
                        "{what}: mounts undeclared volume {name}"
                    );
                }
            }
            if doc["kind"] != "CronJob" {
                let selector = doc["spec"]["selector"]["matchLabels"].as_object().unwrap();
                for (key, value) in selector {
                    assert_eq!(
                        &template["metadata"]["labels"][key], value,
                        "{what}: the selector does not select its own pods"
                    );
                }
            }
        }
    }
}

#[test]
fn the_daemonset_runs_the_dedicated_agent_executable_that_the_image_holds() {
    let docs = documents(Path::new("agents/kubernetes/agent-daemonset.yaml"));
    let container = &docs[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["command"],
        serde_json::json!(["/usr/local/bin/faultline-agent"])
    );
    // Every argument is a flag the dedicated executable takes (no `agent` subcommand word).
    let help = Command::new(AGENT_BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in container["args"].as_array().unwrap() {
        let flag = arg.as_str().unwrap().split('=').next().unwrap();
        assert!(
            flag.starts_with("--") && help.contains(&format!("{flag} <")),
            "`{flag}` is not a flag of faultline-agent:\n{help}"
        );
    }
    let dockerfile = std::fs::read_to_string("agents/Dockerfile").unwrap();
    assert!(
        dockerfile.contains("target/dist/faultline-agent /usr/local/bin/"),
        "the image must hold the agent executable"
    );
}

#[test]
fn coordinator_on_sqlite_is_one_recreated_replica_with_its_volume_and_game_day() {
    let docs = documents(Path::new("agents/kubernetes/coordinator-deployment.yaml"));
    let of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in coordinator-deployment.yaml"))
    };
    let deployment = of("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["coordinator", "/etc/faultline/gameday/gameday.toml"])
    );
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let claim = of("PersistentVolumeClaim");
    assert_eq!(
        volume("state")["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );
    assert_eq!(
        volume("credentials")["secret"]["secretName"],
        "faultline-coordinator"
    );
    // The game day in the ConfigMap keeps its state (history.db) on the mounted claim.
    let config_map = of("ConfigMap");
    assert_eq!(
        volume("gameday")["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let gameday = config_map["data"]["gameday.toml"].as_str().unwrap();
    let state_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "state")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert!(
        gameday.contains(&format!("state_dir = \"{state_mount}\"")),
        "the game day's state_dir is not the claim's mount {state_mount}:\n{gameday}"
    );
    assert!(gameday.contains("agents = \"/etc/faultline/credentials/inventory.toml\""));
}

#[test]
fn coordinator_on_postgres_is_three_replicas_without_a_volume_claim() {
    let docs = documents(Path::new("agents/kubernetes/coordinator-ha.yaml"));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .all(|v| v.get("persistentVolumeClaim").is_none()),
        "{volumes:?}"
    );
    // The game day names the database with its password: a Secret.
    let gameday = volumes.iter().find(|v| v["name"] == "gameday").unwrap();
    assert_eq!(gameday["secret"]["secretName"], "faultline-gameday");
    assert!(docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
}

/// Writes `gameday` into `dir` with the container's paths turned into repository files (the
/// experiment the manifests leave to the user becomes a fleet experiment of `experiments/`),
/// and runs `faultline validate` on it.
fn validate_container_gameday(dir: &Path, gameday: &str) {
    let root = std::env::current_dir().unwrap();
    let text = gameday
        .replace(
            "/etc/faultline/experiments/your-game-day.toml",
            root.join("experiments/fleet-web-kill.toml")
                .to_str()
                .unwrap(),
        )
        .replace(
            "/etc/faultline/credentials/inventory.toml",
            root.join("agents/kubernetes/inventory.toml")
                .to_str()
                .unwrap(),
        );
    assert!(
        !text.contains("/etc/faultline/"),
        "a container path left:\n{text}"
    );
    let file = dir.join("gameday.toml");
    std::fs::write(&file, &text).unwrap();
    let out = faultline(&["validate", file.to_str().unwrap()], &dir.join("state"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_game_days_of_both_coordinator_manifests_validate() {
    let docs = documents(Path::new("agents/kubernetes/coordinator-deployment.yaml"));
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let one = tempdir();
    validate_container_gameday(
        one.path(),
        config_map["data"]["gameday.toml"].as_str().unwrap(),
    );

    // coordinator-ha.yaml shows its game day in a comment (it goes into a Secret): the lines
    // between `cat > gameday.toml <<'TOML'` and `TOML`.
    let ha = std::fs::read_to_string("agents/kubernetes/coordinator-ha.yaml").unwrap();
    let gameday: Vec<&str> = ha
        .lines()
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .skip_while(|l| !l.starts_with("cat > gameday.toml <<'TOML'"))
        .skip(1)
        .take_while(|l| *l != "TOML")
        .collect();
    let gameday = gameday.join("\n");
    assert!(gameday.contains("database = \"postgres://"), "{gameday}");
    let three = tempdir();
    validate_container_gameday(three.path(), &gameday);
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempdir();
    for (unit, program, bin) in [
        ("faultline-coordinator.service", "faultline", BIN),
        ("faultline-agent.service", "faultline-agent", AGENT_BIN),
    ] {
        let text = std::fs::read_to_string(Path::new("agents").join(unit)).unwrap();
        let exec = format!("ExecStart=/usr/local/bin/{program} ");
        assert!(text.contains(&exec), "{unit}");
        // verify checks that ExecStart's program exists: point it at the binary under test.
        let copy = dir.path().join(unit);
        std::fs::write(
            &copy,
            text.replace(&format!("/usr/local/bin/{program} "), &format!("{bin} ")),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("run systemd-analyze (scripts/setup.sh installs systemd)");
        let said = String::from_utf8_lossy(&out.stderr);
        // It exits 0 on unknown keys too, with a warning: anything it says is a failure.
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: systemd-analyze verify said:\n{said}"
        );
    }
    let coordinator = std::fs::read_to_string("agents/faultline-coordinator.service").unwrap();
    for line in [
        "ExecStart=/usr/local/bin/faultline coordinator /etc/faultline/gameday.toml",
        "KillSignal=SIGTERM",
        "StateDirectory=faultline/coordinator",
    ] {
        assert!(coordinator.lines().any(|l| l == line), "no `{line}`");
    }
}
