//! Owns the rule that two runs whose faults reach the same host never overlap: which hosts a run
//! acts on, and the table of fires holding hosts and waiting for them. Pure: no IO, no clock; the
//! coordinator's dispatcher is its only user and feeds it requests and releases.

use std::collections::{BTreeSet, VecDeque};

use jiff::Timestamp;

use crate::inventory::Selection;
use crate::model::{Experiment, LOCAL_GROUP};
use crate::schedule::OnConflict;

/// The host of the embedded agent, i.e. the coordinator's own host, in host sets.
pub(crate) const LOCAL_HOST: &str = "local";

/// The hosts an experiment's faults reach: the inventory agents its target groups resolved to
/// (by agent name), and `local` for faults on the local group (the embedded agent). An experiment
/// without faults reaches none and never conflicts.
pub(crate) fn hosts(exp: &Experiment, selection: &Selection) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for step in &exp.faults {
        if step.on == LOCAL_GROUP {
            hosts.insert(LOCAL_HOST.to_owned());
        } else if let Some(choice) = selection.groups.get(&step.on) {
            hosts.extend(choice.chosen.iter().map(|a| a.name.clone()));
        }
    }
    hosts
}

/// One fire's identity in the table: the dispatcher numbers fires as it starts them.
pub(crate) type FireId = u64;

/// Who holds (or waits for) hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) fire: FireId,
    pub(crate) schedule: String,
    /// The nominal fire time, for messages.
    pub(crate) at: Timestamp,
    pub(crate) hosts: BTreeSet<String>,
}

/// What a request for hosts got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The hosts are the fire's until it releases them.
    Granted,
    /// `on_conflict = "queue"`: the fire waits; `release` grants it in request order.
    Queued,
    /// `on_conflict = "skip"`: another fire holds some of the hosts; the fire does not run.
    Conflict {
        schedule: String,
        at: Timestamp,
        /// The current run of the holder, when it has started one.
        run: Option<String>,
        hosts: Vec<String>,
    },
}

impl Answer {
    /// The skip reason of a conflict, as recorded and logged.
    pub(crate) fn reason(&self) -> Option<String> {
        let Answer::Conflict {
            schedule,
            at,
            run,
            hosts,
        } = self
        else {
            return None;
        };
        let run = run
            .as_ref()
            .map(|r| format!(" (run {r})"))
            .unwrap_or_default();
        Some(format!(
            "conflict: schedule `{schedule}` (fire at {at:.0}){run} is acting on host(s) {}",
            hosts.join(", ")
        ))
    }
}

#[derive(Debug, Clone)]
struct Holder {
    claim: Claim,
    run: Option<String>,
}

/// The hosts held by running fires and the fires queued for them, first come first served: a
/// queued fire is never overtaken by a later one that wants any of its hosts, so none starves.
#[derive(Debug, Default)]
pub(crate) struct Table {
    held: Vec<Holder>,
    waiting: VecDeque<Claim>,
}

impl Table {
    pub(crate) fn request(&mut self, claim: Claim, policy: OnConflict) -> Answer {
        if let Some(holder) = self
            .held
            .iter()
            .find(|h| !h.claim.hosts.is_disjoint(&claim.hosts))
        {
            if policy == OnConflict::Skip {
                return Answer::Conflict {
                    schedule: holder.claim.schedule.clone(),
                    at: holder.claim.at,
                    run: holder.run.clone(),
                    hosts: holder
                        .claim
                        .hosts
                        .intersection(&claim.hosts)
                        .cloned()
                        .collect(),
                };
            }
            self.waiting.push_back(claim);
            return Answer::Queued;
        }
        // Free now, but an earlier fire queued for one of these hosts goes first.
        if self
            .waiting
            .iter()
            .any(|w| !w.hosts.is_disjoint(&claim.hosts))
        {
            if policy == OnConflict::Skip {
                let w = self
                    .waiting
                    .iter()
                    .find(|w| !w.hosts.is_disjoint(&claim.hosts))
                    .expect("found above");
                return Answer::Conflict {
                    schedule: w.schedule.clone(),
                    at: w.at,
                    run: None,
                    hosts: w.hosts.intersection(&claim.hosts).cloned().collect(),
                };
            }
            self.waiting.push_back(claim);
            return Answer::Queued;
        }
        self.held.push(Holder { claim, run: None });
        Answer::Granted
    }

    /// Notes the run a holder is on now, so a conflict names it.
    pub(crate) fn running(&mut self, fire: FireId, run: &str) {
        if let Some(h) = self.held.iter_mut().find(|h| h.claim.fire == fire) {
            h.run = Some(run.to_owned());
        }
    }

    /// Ends a fire's claim, held or waiting; returns the queued fires granted now, in order.
    pub(crate) fn release(&mut self, fire: FireId) -> Vec<FireId> {
        self.held.retain(|h| h.claim.fire != fire);
        self.waiting.retain(|w| w.fire != fire);
        let mut granted = Vec::new();
        let mut still: VecDeque<Claim> = VecDeque::new();
        while let Some(w) = self.waiting.pop_front() {
            let blocked = self
                .held
                .iter()
                .any(|h| !h.claim.hosts.is_disjoint(&w.hosts))
                || still.iter().any(|s| !s.hosts.is_disjoint(&w.hosts));
            if blocked {
                still.push_back(w);
            } else {
                granted.push(w.fire);
                self.held.push(Holder {
                    claim: w,
                    run: None,
                });
            }
        }
        self.waiting = still;
        granted
    }

    /// Whether no fire holds or waits for anything.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty() && self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(fire: FireId, schedule: &str, hosts: &[&str]) -> Claim {
        Claim {
            fire,
            schedule: schedule.to_owned(),
            at: Timestamp::from_second(1_800_000_000 + fire as i64).unwrap(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    #[test]
    fn disjoint_hosts_run_at_once_and_a_shared_host_queues_until_released() {
        let mut t = Table::default();
        assert_eq!(
            t.request(claim(1, "a", &["local", "web1"]), OnConflict::Queue),
            Answer::Granted
        );
        assert_eq!(
            t.request(claim(2, "b", &["web2"]), OnConflict::Queue),
            Answer::Granted
        );
        assert_eq!(
            t.request(claim(3, "c", &["web1"]), OnConflict::Queue),
            Answer::Queued
        );
        assert_eq!(t.release(2), Vec::<FireId>::new(), "web2 was not wanted");
        assert_eq!(t.release(1), vec![3]);
        assert_eq!(t.release(3), Vec::<FireId>::new());
        assert!(t.is_empty());
    }

    #[test]
    fn skip_names_the_holder_its_run_and_the_shared_hosts() {
        let mut t = Table::default();
        assert_eq!(
            t.request(claim(1, "a", &["local", "web1"]), OnConflict::Queue),
            Answer::Granted
        );
        t.running(1, "RUN-1");
        let answer = t.request(claim(2, "b", &["web1", "web9"]), OnConflict::Skip);
        assert_eq!(
            answer.reason().unwrap(),
            "conflict: schedule `a` (fire at 2027-01-15T08:00:01Z) (run RUN-1) is acting on host(s) web1"
        );
        // A skipped fire holds nothing and waits for nothing.
        assert_eq!(t.release(1), Vec::<FireId>::new());
        assert!(t.is_empty());
    }

    #[test]
    fn a_queued_fire_is_not_overtaken_by_a_later_one_for_the_same_host() {
        let mut t = Table::default();
        assert_eq!(
            t.request(claim(1, "a", &["h1"]), OnConflict::Queue),
            Answer::Granted
        );
        assert_eq!(
            t.request(claim(2, "b", &["h1", "h2"]), OnConflict::Queue),
            Answer::Queued
        );
        // h2 is free, but fire 2 queued for it first.
        assert_eq!(
            t.request(claim(3, "c", &["h2"]), OnConflict::Queue),
            Answer::Queued
        );
        let skip = t.request(claim(4, "d", &["h2"]), OnConflict::Skip);
        assert!(
            skip.reason().unwrap().starts_with("conflict: schedule `b`"),
            "{skip:?}"
        );
        assert_eq!(t.release(1), vec![2], "3 waits behind 2 on h2");
        assert_eq!(t.release(2), vec![3]);
        assert_eq!(t.release(3), Vec::<FireId>::new());
        assert!(t.is_empty());
    }

    #[test]
    fn releasing_a_waiting_fire_removes_it_and_fires_without_hosts_never_wait() {
        let mut t = Table::default();
        assert_eq!(
            t.request(claim(1, "a", &["h1"]), OnConflict::Queue),
            Answer::Granted
        );
        assert_eq!(
            t.request(claim(2, "b", &["h1"]), OnConflict::Queue),
            Answer::Queued
        );
        assert_eq!(t.release(2), Vec::<FireId>::new());
        assert_eq!(
            t.request(claim(3, "c", &[]), OnConflict::Skip),
            Answer::Granted
        );
        assert_eq!(t.release(1), Vec::<FireId>::new());
        assert_eq!(t.release(3), Vec::<FireId>::new());
        assert!(t.is_empty());
    }

    #[test]
    fn one_release_grants_every_waiter_that_no_longer_overlaps() {
        let mut t = Table::default();
        assert_eq!(
            t.request(claim(1, "a", &["h1", "h2"]), OnConflict::Queue),
            Answer::Granted
        );
        assert_eq!(
            t.request(claim(2, "b", &["h1"]), OnConflict::Queue),
            Answer::Queued
        );
        assert_eq!(
            t.request(claim(3, "c", &["h2"]), OnConflict::Queue),
            Answer::Queued
        );
        assert_eq!(
            t.request(claim(4, "d", &["h1"]), OnConflict::Queue),
            Answer::Queued
        );
        assert_eq!(t.release(1), vec![2, 3]);
        assert_eq!(t.release(2), vec![4]);
    }
}
