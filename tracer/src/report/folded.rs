//! Collapsed stacks (flamegraph.pl / inferno "folded" format): one line per stack,
//! `comm;root;...;leaf;[kind] microseconds`.

use std::io::{self, Write};

use tracer_common::WaitKind;

use crate::{
    chains::{self, ChainSite},
    model::{Profile, ProfileKind, ProfileStack},
    report::Weight,
};

/// The frame that marks a stack whose unwinding stopped before the root.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// The folded lines of a profile, heaviest first. The count is the blocked time in
/// microseconds for a recording, the number of threads for a snapshot; zero-weight
/// stacks (under one microsecond) are left out.
#[cfg(test)]
pub fn folded_lines(profile: &Profile) -> Vec<String> {
    folded_lines_weighted(profile, Weight::default_for(profile.kind))
}

/// The folded lines with the count `weight` chooses (zero-weight stacks left out).
pub fn folded_lines_weighted(profile: &Profile, weight: Weight) -> Vec<String> {
    profile
        .stacks
        .iter()
        .filter_map(|stack| {
            let count = weight.of(stack);
            (count > 0).then(|| format!("{} {count}", folded_stack(profile, stack)))
        })
        .collect()
}

/// The folded lines as a diff compares two profiles (`folded_lines_weighted` otherwise):
/// without what differs from run to run for the same wait: the process's pid, and what a
/// thread waits on (a pipe's inode, a lock's address, a connection's port), its kind
/// alone kept (a goroutine's, its Go wait reason). Equal lines are added up by the diff.
/// A recording's waits still going on are left out of its blocked time: their ages grow
/// with the time between two recordings (the diff's table compares them by threads).
pub fn comparable_folded_lines(profile: &Profile, weight: Weight) -> Vec<String> {
    let ages_left_out = profile.kind == ProfileKind::Recording && weight == Weight::Time;
    profile
        .stacks
        .iter()
        .filter(|stack| !(ages_left_out && stack.in_progress))
        .filter_map(|stack| {
            let count = weight.of(stack);
            (count > 0).then(|| {
                let mut stack = stack.clone();
                stack.object = match stack.kind {
                    WaitKind::Goroutine => stack
                        .object
                        .as_deref()
                        .map(|object| crate::model::go_wait_reason(object).to_owned()),
                    _ => None,
                };
                let root = stack.process.take().map_or_else(|| profile.comm.clone(), |p| p.comm);
                format!("{} {count}", folded_stack_from(&root, profile, &stack))
            })
        })
        .collect()
}

/// The `;`-joined frames of one stack, without the count. The root frame names the
/// process: its comm, and in a profile of several processes its pid too (`app (4242)`).
pub fn folded_stack(profile: &Profile, stack: &ProfileStack) -> String {
    let root = match &stack.process {
        Some(process) => process.to_string(),
        None => profile.comm.clone(),
    };
    folded_stack_from(&root, profile, stack)
}

/// `folded_stack` under the root frame `root`.
fn folded_stack_from(root: &str, profile: &Profile, stack: &ProfileStack) -> String {
    let mut line = sanitize(root);
    if stack.truncated {
        line.push(';');
        line.push_str(TRUNCATED_FRAME);
    }
    for frame in &stack.frames {
        line.push(';');
        line.push_str(&sanitize(&frame.name));
    }
    line.push(';');
    line.push_str(&sanitize(&kind_frame(profile, stack)));
    line
}

/// The last frame: the wait kind, what it waits on, and whether it never ended:
/// `[futex]`, `[send 10.0.0.5:80]`, `[futex STATS_QUEUE still-blocked]`. A goroutine's
/// frame is its Go wait reason alone (`[chan receive]`), as Go's own tools print it.
pub fn kind_frame(profile: &Profile, stack: &ProfileStack) -> String {
    let mut frame = match (stack.kind, &stack.object) {
        (WaitKind::Goroutine, Some(reason)) => format!("[{reason}"),
        (kind, Some(object)) => format!("[{} {object}", kind.name()),
        (kind, None) => format!("[{}", kind.name()),
    };
    // In a snapshot every wait is in progress; in a recording the ones that never
    // ended are told apart from the completed ones.
    if stack.in_progress && profile.kind == ProfileKind::Recording {
        frame.push_str(" still-blocked");
    }
    frame.push(']');
    frame
}

/// `;` separates frames and a newline ends the line, so neither may appear in a name;
/// other control characters are written out (the SVG is drawn from these lines).
pub(super) fn sanitize(name: &str) -> String {
    crate::report::escape_name(&name.replace(';', ":").replace(['\n', '\r'], " ")).into_owned()
}

/// The folded lines with each chain as one tower, as offwaketime merges a wakee's stack
/// with its waker's: a stack where a chain starts goes on with `[woken by NAME]`, the
/// stack where that waker was blocked (the heaviest of its site), and so on to a frame
/// for the chain's end (`[→ peer pid 30375 (backend)]`; what its threads do is in the
/// summary's line). Other stacks are as in
/// `folded_lines_weighted`.
pub fn chain_folded_lines(profile: &Profile, weight: Weight) -> Vec<String> {
    let chain_at =
        |stack: &ProfileStack| profile.chains.iter().find(|chain| chain.start.matches(stack));
    profile
        .stacks
        .iter()
        .filter_map(|stack| {
            let count = weight.of(stack);
            if count == 0 {
                return None;
            }
            let mut line = folded_stack(profile, stack);
            if let Some(chain) = chain_at(stack) {
                for hop in &chain.hops {
                    line.push_str(&format!(";[woken by {}]", sanitize(&hop.waker)));
                    if let Some(blocked) = heaviest_at(profile, &hop.at) {
                        for frame in &blocked.frames {
                            line.push(';');
                            line.push_str(&sanitize(&frame.name));
                        }
                        line.push(';');
                        line.push_str(&sanitize(&kind_frame(profile, blocked)));
                    }
                }
                let end = chains::terminal_name(&chain.terminal);
                if !end.is_empty() {
                    line.push_str(&format!(";[{}]", sanitize(&end)));
                }
            }
            Some(format!("{line} {count}"))
        })
        .collect()
}

/// The heaviest stack at `site` (its object's first).
fn heaviest_at<'a>(profile: &'a Profile, site: &ChainSite) -> Option<&'a ProfileStack> {
    let at_site = profile
        .stacks
        .iter()
        .filter(|stack| stack.kind == site.kind && stack.call_site() == site.site);
    at_site.max_by_key(|stack| (stack.object == site.object, stack.stats.total_ns))
}

pub fn write_folded_weighted(
    profile: &Profile,
    weight: Weight,
    out: &mut impl Write,
) -> io::Result<()> {
    for line in folded_lines_weighted(profile, weight) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{ThreadCounts, TraceCounts, tests::stack};

    fn profile(stacks: Vec<ProfileStack>) -> Profile {
        Profile {
            kind: ProfileKind::Recording,
            pid: 42,
            start_unix_ns: None,
            command_line: None,
            comm: "pile;up".into(),
            cgroup: None,
            duration: Duration::from_secs(3),
            min_wait: Duration::from_millis(1),
            sampling: None,
            no_wakers: false,
            target_exited: false,
            stacks,
            below_threshold: vec![],
            counts: TraceCounts::default(),
            thread_counts: ThreadCounts::default(),
            endpoint_states: Default::default(),
            thread_names: Default::default(),
            wakers: Vec::new(),
            modules: Default::default(),
            process_modules: Default::default(),
            lock_addresses: Default::default(),
            chains: Vec::new(),
            processes: Vec::new(),
            timeline: None,
            python: None,
            backed_up: Default::default(),
        }
    }

    #[test]
    fn lines_go_comm_root_to_leaf_then_kind_then_micros() {
        let futex = stack(
            &[("start_thread", false), ("app::handler", true), ("syscall", false)],
            WaitKind::Futex,
            &[(1, 2_500_000), (2, 500_000)],
        );
        let mut send = stack(&[("app::report", true)], WaitKind::Send, &[(3, 1_999)]);
        send.truncated = true;
        send.object = Some("10.0.0.5:80".into());
        let lines = folded_lines(&profile(vec![futex, send]));
        assert_eq!(
            lines,
            [
                "pile:up;start_thread;app::handler;syscall;[futex] 3000",
                "pile:up;[truncated];app::report;[send 10.0.0.5:80] 1",
            ]
        );
    }

    #[test]
    fn waits_in_progress_are_marked_in_recordings_and_counted_by_thread_in_snapshots() {
        let mut stuck =
            stack(&[("app::handler", true)], WaitKind::Futex, &[(1, 7_000), (2, 9_000)]);
        stuck.in_progress = true;
        stuck.object = Some("app::QUEUE".into());
        let mut recording = profile(vec![stuck]);
        assert_eq!(
            folded_lines(&recording),
            ["pile:up;app::handler;[futex app::QUEUE still-blocked] 16"]
        );
        recording.kind = ProfileKind::Snapshot;
        assert_eq!(folded_lines(&recording), ["pile:up;app::handler;[futex app::QUEUE] 2"]);
    }

    #[test]
    fn a_chain_stands_as_one_tower_on_its_waiters_stack() {
        let profile = crate::report::fixtures::fixture_profile();
        let lines = chain_folded_lines(&profile, Weight::Time);
        let handlers = lines.iter().find(|line| line.contains("app::send_stat")).unwrap();
        assert_eq!(
            handlers,
            "app;start_thread;app::handler;app::send_stat;std::sync::mpmc::array::Channel<T>::send;\
             syscall;[futex app::STATS];[woken by reporter];app::reporter;app::write_to_backend;\
             send;[send 10.0.0.5:80 still-blocked];[→ peer pid 5151 (stats-backend)] 140500"
        );
        // The reporter's own chain (it was blocked longer than the handlers) ends at the
        // peer too; the other stacks are as in the plain folded lines.
        assert!(
            lines.contains(
                &"app;app::reporter;app::write_to_backend;send;[send 10.0.0.5:80 still-blocked];\
              [→ peer pid 5151 (stats-backend)] 1250000"
                    .to_string()
            )
        );
        let plain = folded_lines_weighted(&profile, Weight::Time);
        assert_eq!(lines.len(), plain.len());
        for line in lines.iter().filter(|line| !line.contains("[→")) {
            assert!(plain.contains(line), "{line}");
        }
    }

    #[test]
    fn the_weight_chooses_the_count() {
        let futex = stack(&[("f", true)], WaitKind::Futex, &[(1, 3_000), (1, 4_000), (2, 5_000)]);
        let recording = profile(vec![futex]);
        assert_eq!(folded_lines_weighted(&recording, Weight::Time), ["pile:up;f;[futex] 12"]);
        assert_eq!(folded_lines_weighted(&recording, Weight::Count), ["pile:up;f;[futex] 3"]);
        assert_eq!(folded_lines_weighted(&recording, Weight::Threads), ["pile:up;f;[futex] 2"]);
    }

    #[test]
    fn goroutine_frames_are_the_go_wait_reason() {
        let mut parked = stack(&[("main.receiver", true)], WaitKind::Goroutine, &[(1, 5_000)]);
        parked.object = Some("chan receive".into());
        let mut recording = profile(vec![parked]);
        assert_eq!(folded_lines(&recording), ["pile:up;main.receiver;[chan receive] 5"]);
        recording.stacks[0].in_progress = true;
        assert_eq!(
            folded_lines(&recording),
            ["pile:up;main.receiver;[chan receive still-blocked] 5"]
        );
    }

    #[test]
    fn sub_microsecond_stacks_are_left_out() {
        let tiny = stack(&[("f", true)], WaitKind::Poll, &[(1, 999)]);
        assert!(folded_lines(&profile(vec![tiny])).is_empty());
    }
}
