//! Collapsed stacks (flamegraph.pl / inferno "folded" format): one line per stack,
//! `comm;root;...;leaf;[kind] microseconds`.

use std::io::{self, Write};

use tracer_common::WaitKind;

use crate::{
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

/// The `;`-joined frames of one stack, without the count.
pub fn folded_stack(profile: &Profile, stack: &ProfileStack) -> String {
    let mut line = sanitize(&profile.comm);
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
fn sanitize(name: &str) -> String {
    crate::report::escape_name(&name.replace(';', ":").replace(['\n', '\r'], " ")).into_owned()
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
            duration: Duration::from_secs(3),
            min_wait: Duration::from_millis(1),
            sampling: None,
            target_exited: false,
            stacks,
            below_threshold: vec![],
            counts: TraceCounts::default(),
            thread_counts: ThreadCounts::default(),
            endpoint_states: Default::default(),
            thread_names: Default::default(),
            wakers: Vec::new(),
            modules: Default::default(),
            lock_addresses: Default::default(),
            chains: Vec::new(),
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
