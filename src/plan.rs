//! Owns `faultline plan`: what a run would do — fixtures, probes, targets, the fault timeline and
//! what each fault will change — without doing any of it.

use std::fmt::Write;

use crate::inventory::Selection;
use crate::model::{Check, Experiment, LOCAL_GROUP, Pick, ReadyKind, Slo};
use crate::units::{Dur, Percent};

/// Renders the plan. `preview` adds what each fault would act on right now (reads the host,
/// changes nothing); without it the output depends only on the experiment.
pub(crate) fn render(exp: &Experiment, preview: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plan for `{}`", exp.title);
    let _ = writeln!(
        out,
        "file: {} (sha256 {})",
        exp.file.display(),
        &exp.sha256[..16]
    );
    if let Some(d) = &exp.description {
        let _ = writeln!(out, "description: {}", d.trim());
    }
    if !exp.vars.is_empty() {
        out.push_str("\nvars (--var beats --vars beats [vars]; secrets are never shown):\n");
        for line in &exp.vars {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !exp.setup.is_empty() {
        out.push_str("\nsetup (started first, stopped last, each in its own process group):\n");
        for (i, f) in exp.setup.iter().enumerate() {
            let ready = match &f.ready {
                None => "no readiness check".to_owned(),
                Some(r) => match &r.kind {
                    ReadyKind::Tcp(addr) => format!(
                        "ready when {addr} accepts TCP connections (within {})",
                        Dur(r.within)
                    ),
                    ReadyKind::Http(url) => {
                        format!("ready when {url} answers (within {})", Dur(r.within))
                    }
                },
            };
            let _ = writeln!(out, "  {}. `{}`: runs {:?}; {ready}", i + 1, f.name, f.argv);
        }
    }
    if let Some(b) = &exp.budget {
        let _ = writeln!(
            out,
            "\nerror budget gate (checked first; nothing runs if it fails):\n  Prometheus {}: good = `{}`, total = `{}`\n  target {}; refuse (not_run) when less than {} of the budget remains",
            b.prometheus,
            b.good,
            b.total,
            Percent(b.target),
            Percent(b.min_remaining)
        );
    }
    let mut resources = Vec::new();
    for f in &exp.faults {
        if let Some(r) = f.spec.run_resource() {
            if !resources.contains(&r) {
                resources.push(r);
            }
        }
    }
    if !resources.is_empty() {
        out.push_str(
            "\nrun resources (opened after setup, before the steady state; closed when the run ends):\n",
        );
        for r in &resources {
            let _ = writeln!(
                out,
                "  - {}: no toxics until a fault turns them on",
                r.describe()
            );
        }
    }
    let _ = writeln!(
        out,
        "\nsteady state (baseline window {}):",
        Dur(exp.steady_state.window)
    );
    for p in &exp.steady_state.probes {
        let check = match &p.check {
            Check::Http(_) | Check::Grpc(_) => crate::probe::describe(&p.check).unwrap_or_default(),
            Check::Tcp { addr } => format!("TCP connect to {addr}"),
            Check::Command {
                argv,
                expect_exit,
                stdout,
                value,
            } => {
                let out = stdout
                    .as_ref()
                    .map_or_else(String::new, |re| format!(", output matching /{re}/"));
                let number = if *value {
                    ", output read as a number"
                } else {
                    ""
                };
                format!("run {argv:?}, expect exit {expect_exit}{out}{number}")
            }
            Check::Prometheus {
                url,
                query,
                threshold,
            } => {
                format!(
                    "Prometheus query `{query}` at {url}, expect one value {threshold} (no series fails)"
                )
            }
        };
        let signal = p
            .signal
            .map_or_else(String::new, |s| format!(" [golden signal: {}]", s.as_str()));
        let _ = writeln!(
            out,
            "  - `{}`: {check}; every {}, timeout {}{signal}",
            p.name,
            Dur(p.every),
            Dur(p.timeout)
        );
        let _ = writeln!(out, "    SLO: {}", slo_text(&p.slo));
        if let Some(slo) = &p.slo_during {
            let _ = writeln!(out, "    SLO during the faults: {}", slo_text(slo));
        }
    }
    out.push_str("\ntargets:\n  local: the embedded agent (faults act on this host)\n");
    for (name, group) in &exp.targets {
        let tags: Vec<String> = group.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let how_many = match group.pick {
            None => "all of them".to_owned(),
            Some(Pick::Count(n)) => format!("{n} of them"),
            Some(Pick::Percent(p)) => format!(
                "{} of them, rounded up, at least 1",
                crate::units::Percent(p)
            ),
        };
        let cap = group
            .max
            .map_or_else(String::new, |m| format!(", at most {m}"));
        let seeded = if group.pick.is_some() || group.max.is_some() {
            ", chosen by the run's seed"
        } else {
            ""
        };
        let tags = if tags.is_empty() {
            "anything".to_owned()
        } else {
            tags.join(", ")
        };
        let _ = writeln!(
            out,
            "  {name}: agents tagged {tags}; {how_many}{cap}{seeded}"
        );
    }
    out.push_str("\ntimeline (t = start of the method):\n");
    if preview && !exp.setup.is_empty() {
        // Otherwise "matches no process right now" reads like a broken selector.
        out.push_str("  (\"now:\" is this moment, while the [[setup]] fixtures are not running)\n");
    }
    let mut faults: Vec<_> = exp.faults.iter().collect();
    faults.sort_by_key(|f| f.at);
    for f in faults {
        let _ = writeln!(
            out,
            "  t+{:<8} inject `{}` ({}) on {}: {}",
            Dur(f.at).to_string(),
            f.name,
            f.spec.kind(),
            f.on,
            f.spec.describe()
        );
        // Only the embedded agent's host is this host: a remote group's processes are not here.
        if preview && f.on == LOCAL_GROUP {
            let _ = writeln!(out, "  {:<10} now: {}", "", f.spec.preview());
        }
        let index = exp
            .faults
            .iter()
            .position(|g| std::ptr::eq(g, f))
            .unwrap_or_default();
        if let Some(changes) = f.spec.changes(&format!("RUN-{index}")) {
            // The fault id (run id + index) names the nft table and picks the tc handle; the run id
            // is only chosen when the run starts, so the plan writes RUN in its place.
            let note = if changes.contains("RUN-") {
                " (RUN stands for the run id; the table name and tc handle derive from it)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {:<10} exact changes{note}:", "");
            for line in changes.lines() {
                let _ = writeln!(out, "  {:<10}   {line}", "");
            }
        }
        match f.duration {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "  t+{:<8} revert `{}`",
                    Dur(f.at + d).to_string(),
                    f.name
                );
            }
            None => {
                let _ = writeln!(out, "  {:<10} (instant: nothing to revert)", "");
            }
        }
    }
    if !exp.aborts.is_empty() {
        out.push_str(
            "\nabort rules (while faults are active; a firing rule reverts every fault at once):\n",
        );
        for a in &exp.aborts {
            let _ = writeln!(out, "  - {}", a.name);
        }
    }
    let _ = writeln!(
        out,
        "\nrecovery: the steady state must hold again within {} of the last fault ending (t+{}), confirmed over one window",
        Dur(exp.recovery_within),
        Dur(exp.method_length())
    );
    if !exp.gate.is_empty() {
        let _ = writeln!(
            out,
            "\nregression gate (after a passed run, against earlier runs titled `{}` in the history; a breach fails the run):",
            exp.title
        );
        for r in &exp.gate {
            let _ = writeln!(out, "  - {} = \"{}\"", r.metric.key(), r.rule);
        }
    }
    out
}

/// The agents each target group resolved to. With a seed, the exact agents a run with that seed
/// acts on; without, every matching agent and how many a run will pick.
pub(crate) fn render_selection(selection: &Selection, seed: Option<u64>) -> String {
    let mut out = String::new();
    if selection.groups.is_empty() {
        return out;
    }
    match seed {
        Some(seed) => {
            let _ = writeln!(out, "\nresolved agents (seed {seed}):");
        }
        None => out.push_str(
            "\nresolved agents (matching now; pass --seed N to see a run's exact choice):\n",
        ),
    }
    for (name, choice) in &selection.groups {
        let list = if seed.is_some() {
            &choice.chosen
        } else {
            &choice.matching
        };
        let _ = writeln!(
            out,
            "  {name}: {} of {} matching agent(s)",
            choice.chosen.len(),
            choice.matching.len()
        );
        for agent in list {
            let tags: Vec<String> = agent.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "    - {} at {} [{}]",
                agent.name,
                agent.address,
                tags.join(", ")
            );
        }
    }
    out
}

fn slo_text(slo: &Slo) -> String {
    let mut parts = vec![format!("success >= {}", slo.success)];
    for (label, bound) in [("p50", slo.p50), ("p95", slo.p95), ("p99", slo.p99)] {
        if let Some(b) = bound {
            parts.push(format!("{label} <= {b}"));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn plan_shows_groups_and_the_agents_a_seed_picks() {
        let text = r#"
title = "fleet"
[targets.web]
tags = { role = "web" }
percent = "50%"
max = 2
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "p"
tcp = "127.0.0.1:1"
[[fault]]
name = "kill"
kind = "process-kill"
on = "web"
select = { name = "nginx" }
[recovery]
within = "5s"
"#;
        let exp = crate::experiment::parse(Path::new("x.toml"), text).unwrap();
        let plan = super::render(&exp, true);
        assert!(
            plan.contains("  web: agents tagged role=web; 50% of them, rounded up, at least 1, at most 2, chosen by the run's seed\n"),
            "{plan}"
        );
        assert!(
            !plan.contains("now:"),
            "a remote group's processes are not previewed from here: {plan}"
        );
        let names = ["web-1", "web-2", "web-3", "db-1"];
        let roles = ["web", "web", "web", "db"];
        let agents: Vec<(String, &str)> = names
            .iter()
            .zip(roles)
            .map(|(n, r)| ((*n).to_owned(), r))
            .collect();
        let inventory = crate::inventory::test_inventory(&agents);
        let selection = crate::inventory::select(&exp, Some(&inventory), 42).unwrap();
        let chosen = super::render_selection(&selection, Some(42));
        assert!(
            chosen.starts_with("\nresolved agents (seed 42):\n  web: 2 of 3 matching agent(s)\n"),
            "{chosen}"
        );
        assert_eq!(chosen.matches("    - web-").count(), 2, "{chosen}");
        assert!(chosen.contains(".test:7443 [role=web]\n"), "{chosen}");
        let matching = super::render_selection(&selection, None);
        assert_eq!(
            matching,
            "\nresolved agents (matching now; pass --seed N to see a run's exact choice):\n  web: 2 of 3 matching agent(s)\n    \
             - web-1 at https://web-1.test:7443 [role=web]\n    - web-2 at https://web-2.test:7443 [role=web]\n    \
             - web-3 at https://web-3.test:7443 [role=web]\n"
        );
    }

    #[test]
    fn plan_reads_as_a_timeline() {
        let text = r#"
title = "kill and fill"
[[setup]]
name = "web"
run = ["python3", "-m", "http.server", "18080"]
ready = { tcp = "127.0.0.1:18080", within = "5s" }
[steady_state]
window = "2s"
[[steady_state.probe]]
name = "front page"
http = { url = "http://127.0.0.1:18080/", status = [200] }
every = "100ms"
timeout = "500ms"
slo = { success = "99%", p99 = "250ms" }
[[fault]]
name = "fill"
kind = "disk-fill"
path = "/data"
fill_to = "90%"
at = "1s"
duration = "10s"
[[fault]]
name = "kill"
kind = "process-kill"
select = { port = 18080 }
[[abort]]
probe = "front page"
when = { success_below = "50%", over = "3s" }
[recovery]
within = "5s"
"#;
        let exp = crate::experiment::parse(Path::new("x.toml"), text).unwrap();
        let plan = super::render(&exp, false);
        let expected_tail = r#"
setup (started first, stopped last, each in its own process group):
  1. `web`: runs ["python3", "-m", "http.server", "18080"]; ready when 127.0.0.1:18080 accepts TCP connections (within 5s)

steady state (baseline window 2s):
  - `front page`: GET http://127.0.0.1:18080/, expect status 200; every 100ms, timeout 500ms
    SLO: success >= 99%, p99 <= 250 ms

targets:
  local: the embedded agent (faults act on this host)

timeline (t = start of the method):
  t+0s       inject `kill` (process-kill) on local: send SIGKILL to the process listening on TCP port 18080
             (instant: nothing to revert)
  t+1s       inject `fill` (disk-fill) on local: fill the filesystem of /data until it is 90% full (one file, never above 98%); delete the file on revert
  t+11s      revert `fill`

abort rules (while faults are active; a firing rule reverts every fault at once):
  - front page success below 50% over 3s

recovery: the steady state must hold again within 5s of the last fault ending (t+11s), confirmed over one window
"#;
        assert!(
            plan.starts_with("plan for `kill and fill`\nfile: x.toml (sha256 "),
            "{plan}"
        );
        assert!(plan.ends_with(expected_tail), "{plan}");
    }

    #[test]
    fn plan_shows_the_budget_gate_the_regression_gate_and_prometheus_probes() {
        let text = r#"
title = "gated"
[slo_budget]
prometheus = "http://127.0.0.1:9090"
target = "99.9%"
good = 'sum(good)'
total = 'sum(total)'
min_remaining = "10%"
[steady_state]
window = "2s"
[[steady_state.probe]]
name = "queue"
prometheus = { url = "http://127.0.0.1:9090", query = "queue_depth", below = 5 }
signal = "saturation"
[[fault]]
name = "kill"
kind = "process-kill"
select = { port = 18080 }
[recovery]
within = "5s"
[gate]
p99_during = "3x p90 of last 20 runs"
time_to_recover = "1.5x median of last 10 passed"
"#;
        let exp = crate::experiment::parse(Path::new("x.toml"), text).unwrap();
        let plan = super::render(&exp, false);
        let gate = r#"
regression gate (after a passed run, against earlier runs titled `gated` in the history; a breach fails the run):
  - time_to_recover = "1.5x median of last 10 passed"
  - p99_during = "3x p90 of last 20 runs"
"#;
        assert!(plan.ends_with(gate), "{plan}");
        let expected = r"
error budget gate (checked first; nothing runs if it fails):
  Prometheus http://127.0.0.1:9090: good = `sum(good)`, total = `sum(total)`
  target 99.9%; refuse (not_run) when less than 10% of the budget remains

steady state (baseline window 2s):
  - `queue`: Prometheus query `queue_depth` at http://127.0.0.1:9090, expect one value below 5 (no series fails); every 500ms, timeout 1s [golden signal: saturation]
    SLO: success >= 100%
";
        assert!(plan.contains(expected), "{plan}");
    }
}
