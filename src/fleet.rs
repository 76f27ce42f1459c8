//! Owns the commands that act on every agent of an inventory at once: `halt`, `resume` and
//! `revert`. They contact all agents concurrently and print one line per agent and fault.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::agent::{AgentError, RemoteAgent};
use crate::inventory;

/// Exit code when at least one agent could not do what was asked.
const EXIT_ERROR: u8 = 5;

/// Runs `op` on every agent concurrently and returns the results in inventory order.
async fn each<T, F, Fut>(
    agents: &[Arc<RemoteAgent>],
    op: F,
) -> Vec<(Arc<RemoteAgent>, Result<T, AgentError>)>
where
    T: Send + 'static,
    F: Fn(Arc<RemoteAgent>) -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
{
    let tasks: Vec<_> = agents
        .iter()
        .map(|a| (Arc::clone(a), tokio::spawn(op(Arc::clone(a)))))
        .collect();
    let mut results = Vec::new();
    for (agent, task) in tasks {
        let result = task
            .await
            .unwrap_or_else(|e| Err(AgentError::Internal(e.to_string())));
        results.push((agent, result));
    }
    results
}

fn exit(failed: usize) -> ExitCode {
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

pub(crate) async fn halt(path: &Path) -> anyhow::Result<ExitCode> {
    let inventory = inventory::load(path).await.map_err(anyhow::Error::msg)?;
    let mut failed = 0;
    for (agent, result) in each(&inventory.agents, |a| async move { a.halt().await }).await {
        match result {
            Ok(all) => {
                println!(
                    "{}: halted; reverted {} fault(s)",
                    agent.name,
                    all.reverted.len()
                );
                for r in &all.reverted {
                    println!("  {}: {}", r.id, r.detail);
                }
                for e in &all.failed {
                    failed += 1;
                    println!("  REVERT FAILED: {e}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("{}: NOT halted: {e}", agent.name);
            }
        }
    }
    Ok(exit(failed))
}

pub(crate) async fn resume(path: &Path) -> anyhow::Result<ExitCode> {
    let inventory = inventory::load(path).await.map_err(anyhow::Error::msg)?;
    let mut failed = 0;
    for (agent, result) in each(&inventory.agents, |a| async move { a.resume().await }).await {
        match result {
            Ok(_) => println!("{}: resumed; accepting faults", agent.name),
            Err(e) => {
                failed += 1;
                println!("{}: NOT resumed: {e}", agent.name);
            }
        }
    }
    Ok(exit(failed))
}

/// Reverts the faults of one run (`run = Some(id)`) or every active fault on every agent.
pub(crate) async fn revert(path: &Path, run: Option<&str>) -> anyhow::Result<ExitCode> {
    let inventory = inventory::load(path).await.map_err(anyhow::Error::msg)?;
    let run = run.map(str::to_owned);
    let results = each(&inventory.agents, move |agent| {
        let run = run.clone();
        async move {
            let active = agent.list().await?;
            let mut lines = Vec::new();
            for fault in active
                .into_iter()
                .filter(|f| run.as_ref().is_none_or(|r| &f.run_id == r))
            {
                lines.push(match agent.revert(&fault.id).await {
                    Ok(r) => Ok(format!(
                        "{} ({}, run {}): {}",
                        fault.id, fault.kind, fault.run_id, r.detail
                    )),
                    Err(e) => Err(format!(
                        "{} ({}, run {}): {e}",
                        fault.id, fault.kind, fault.run_id
                    )),
                });
            }
            Ok(lines)
        }
    })
    .await;
    let mut failed = 0;
    for (agent, result) in results {
        match result {
            Ok(lines) if lines.is_empty() => println!("{}: nothing to revert", agent.name),
            Ok(lines) => {
                println!("{}:", agent.name);
                for line in lines {
                    match line {
                        Ok(l) => println!("  reverted {l}"),
                        Err(l) => {
                            failed += 1;
                            println!("  REVERT FAILED {l}");
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                println!("{}: could not list its faults: {e}", agent.name);
            }
        }
    }
    Ok(exit(failed))
}
