//! The timeline of a recording as Chrome's trace-event JSON (`.trace.json`), which
//! Perfetto UI, chrome://tracing and speedscope open: a track per thread (within a track
//! per process), each long wait a slice named by its call site with its kind, object,
//! duration and stack in its args, each wake a flow arrow from the waker's track to the
//! wait it ended; waits still blocked at the end run to the end, marked so.
//!
//! The format: <https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU>
//! (the JSON Object Format, `X` complete events, `M` metadata, `s`/`f` flow events).

use std::{collections::BTreeSet, io::Write};

use serde_json::{Value, json};

use crate::model::{Profile, ProfileKind, Timeline, timeline::TimelineSpan};

/// Why a profile has no timeline to write.
#[derive(Debug, thiserror::Error)]
pub enum TraceJsonError {
    #[error(
        "a timeline needs the waits of a recording as they happened: `tracer record --output \
         FILE.trace.json` writes one (a snapshot, or a profile read back, has none)"
    )]
    NoTimeline,
}

/// The width of the slice a waker gets at the wake, in microseconds: a flow's start
/// binds to the slice around it.
const WAKE_SLICE_US: f64 = 1.0;

pub fn write_trace_json(profile: &Profile, out: &mut impl Write) -> anyhow::Result<()> {
    // A profile read back keeps the seconds but not the waits; a recording in which
    // nothing waited has neither, and gets an empty trace.
    let timeline = match &profile.timeline {
        Some(timeline)
            if profile.kind == ProfileKind::Recording
                && (!timeline.spans.is_empty() || timeline.seconds.is_empty()) =>
        {
            timeline
        }
        _ => return Err(TraceJsonError::NoTimeline.into()),
    };
    out.write_all(b"{\"displayTimeUnit\":\"ms\",\"otherData\":")?;
    serde_json::to_writer(&mut *out, &other_data(profile, timeline))?;
    out.write_all(b",\"traceEvents\":[\n")?;
    let mut first = true;
    let mut event = |value: Value, out: &mut dyn Write| -> anyhow::Result<()> {
        if !std::mem::take(&mut first) {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut *out, &value)?;
        Ok(())
    };
    for value in track_names(profile, timeline) {
        event(value, out)?;
    }
    let mut flow_id = 0u64;
    // The last wake sliver on each waker's track: a broadcast wakes many at once, and
    // their arrows share one sliver instead of overlapping ones.
    let mut slivers: std::collections::HashMap<(u32, u32), f64> = Default::default();
    for span in &timeline.spans {
        let pid = span.pid.unwrap_or(profile.pid);
        event(wait_slice(timeline, span, pid), out)?;
        let Some(waker) = span.waker_tid else { continue };
        // An arrow needs a slice to land in: a wait cut to nothing (at the recording's
        // edges) gets none.
        if span.duration_ns < 1_000 {
            continue;
        }
        // The wake: a sliver on the waker's track, and an arrow from it to the wait's end.
        flow_id += 1;
        let end_us = micros(span.start_ns + span.duration_ns);
        let at_us = end_us - WAKE_SLICE_US / 2.0;
        let site = &timeline.stacks[span.stack as usize].site;
        let sliver = slivers.get(&(pid, waker)).copied();
        if sliver.is_none_or(|from| !(from..=from + WAKE_SLICE_US).contains(&at_us)) {
            slivers.insert((pid, waker), end_us - WAKE_SLICE_US);
            event(
                json!({
                    "name": "wake", "cat": "wake", "ph": "X", "pid": pid, "tid": waker,
                    "ts": end_us - WAKE_SLICE_US, "dur": WAKE_SLICE_US,
                    "args": { "woke": span.tid, "woken_at": site },
                }),
                out,
            )?;
        }
        event(
            json!({ "name": "wake", "cat": "wake", "ph": "s", "id": flow_id, "pid": pid,
                    "tid": waker, "ts": at_us }),
            out,
        )?;
        event(
            json!({ "name": "wake", "cat": "wake", "ph": "f", "bp": "e", "id": flow_id,
                    "pid": pid, "tid": span.tid, "ts": at_us }),
            out,
        )?;
    }
    out.write_all(b"\n]}\n")?;
    Ok(())
}

/// What the trace is of, for readers that show it (and people who open the file).
fn other_data(profile: &Profile, timeline: &Timeline) -> Value {
    json!({
        "tracer": super::TRACER_VERSION,
        "target": super::summary::target_name(profile),
        "origin_unix_ns": timeline.origin_unix_ns,
        "duration_ns": profile.duration.as_nanos() as u64,
        "min_wait_ns": profile.min_wait.as_nanos() as u64,
        "sample_period_ns": profile.sampling.map(|sampling| sampling.period.as_nanos() as u64),
        "waits_not_in_the_trace": timeline.spans_dropped,
    })
}

/// The names of the process and thread tracks (`M` metadata events).
fn track_names(profile: &Profile, timeline: &Timeline) -> Vec<Value> {
    let mut events = Vec::new();
    let pids: BTreeSet<u32> =
        timeline.spans.iter().map(|span| span.pid.unwrap_or(profile.pid)).collect();
    for pid in pids {
        let name = match profile.processes.iter().find(|process| process.pid == pid) {
            Some(process) => process.to_string(),
            None => format!("{} ({pid})", profile.comm),
        };
        events.push(json!({ "name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                            "args": { "name": name } }));
    }
    let threads: BTreeSet<(u32, u32)> = timeline
        .spans
        .iter()
        .flat_map(|span| {
            let pid = span.pid.unwrap_or(profile.pid);
            std::iter::once((pid, span.tid)).chain(span.waker_tid.map(|waker| (pid, waker)))
        })
        .collect();
    for (pid, tid) in threads {
        let name = match profile.thread_names.get(&tid) {
            Some(name) => format!("{name} ({tid})"),
            None => format!("thread {tid}"),
        };
        events.push(json!({ "name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                            "args": { "name": name } }));
    }
    events
}

/// One wait: a complete (`X`) slice named by its call site.
fn wait_slice(timeline: &Timeline, span: &TimelineSpan, pid: u32) -> Value {
    let stack = &timeline.stacks[span.stack as usize];
    let mut args = json!({
        "kind": stack.kind.name(),
        "object": stack.object,
        "duration_ms": span.duration_ns as f64 / 1e6,
        "stack": stack.frames.iter().rev().collect::<Vec<_>>(),
    });
    if span.flags.still_blocked {
        args["still_blocked"] = json!(true);
    }
    if span.flags.began_before {
        args["began_before_the_recording"] = json!(true);
    }
    if let Some(waker) = span.waker_tid {
        args["woken_by"] = json!(waker);
    }
    let name = if span.flags.still_blocked {
        format!("{} (still blocked)", stack.site)
    } else {
        stack.site.clone()
    };
    json!({
        "name": name, "cat": stack.kind.name(), "ph": "X", "pid": pid, "tid": span.tid,
        "ts": micros(span.start_ns), "dur": micros(span.duration_ns), "args": args,
    })
}

/// Nanoseconds as the format's microseconds (fractions kept).
fn micros(ns: u64) -> f64 {
    ns as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use tracer_common::WaitKind;

    use super::*;
    use crate::model::timeline::{SpanFlags, TimelineStack};

    fn profile_with_timeline() -> Profile {
        let mut profile = Profile::new(ProfileKind::Recording, 42, "app".into());
        profile.thread_names.insert(7, "worker-1".into());
        let stack = TimelineStack {
            site: "enqueue".into(),
            kind: WaitKind::Futex,
            object: Some("queue".into()),
            frames: vec!["main".into(), "enqueue".into(), "syscall".into()],
        };
        let span = |tid, start_ns, waker_tid, still_blocked| TimelineSpan {
            pid: None,
            tid,
            stack: 0,
            start_ns,
            duration_ns: 2_000_000,
            flags: SpanFlags { still_blocked, began_before: false },
            waker_tid,
        };
        profile.timeline = Some(Timeline {
            origin_unix_ns: Some(1),
            stacks: vec![stack],
            spans: vec![span(7, 1_000, Some(8), false), span(9, 5_000, None, true)],
            spans_dropped: 0,
            seconds: vec![],
        });
        profile
    }

    fn events(profile: &Profile) -> Vec<Value> {
        let mut out = Vec::new();
        write_trace_json(profile, &mut out).unwrap();
        let trace: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(trace["displayTimeUnit"], "ms");
        trace["traceEvents"].as_array().unwrap().clone()
    }

    #[test]
    fn waits_are_slices_on_their_threads_tracks_with_their_args() {
        let events = events(&profile_with_timeline());
        let slices: Vec<&Value> =
            events.iter().filter(|e| e["ph"] == "X" && e["cat"] == "futex").collect();
        assert_eq!(slices.len(), 2);
        let first = slices[0];
        assert_eq!((first["pid"].as_u64(), first["tid"].as_u64()), (Some(42), Some(7)));
        assert_eq!(first["name"], "enqueue");
        assert_eq!((first["ts"].as_f64(), first["dur"].as_f64()), (Some(1.0), Some(2000.0)));
        assert_eq!(first["args"]["object"], "queue");
        assert_eq!(first["args"]["stack"], json!(["syscall", "enqueue", "main"]));
        assert_eq!(slices[1]["args"]["still_blocked"], true);
        assert_eq!(slices[1]["name"], "enqueue (still blocked)");
        let thread_names: Vec<&Value> =
            events.iter().filter(|e| e["name"] == "thread_name").collect();
        assert!(thread_names.iter().any(|e| e["args"]["name"] == "worker-1 (7)"));
        assert!(
            events.iter().any(|e| e["name"] == "process_name" && e["args"]["name"] == "app (42)")
        );
    }

    #[test]
    fn a_wake_is_a_flow_from_the_wakers_track_into_the_wait() {
        let events = events(&profile_with_timeline());
        let start = events.iter().find(|e| e["ph"] == "s").expect("a flow start");
        let finish = events.iter().find(|e| e["ph"] == "f").expect("a flow end");
        assert_eq!(start["id"], finish["id"]);
        assert_eq!((start["tid"].as_u64(), finish["tid"].as_u64()), (Some(8), Some(7)));
        assert_eq!(finish["bp"], "e");
        // Both inside slices: the waker's sliver, and the wait (1 µs to 2001 µs).
        let ts = finish["ts"].as_f64().unwrap();
        assert!(ts > 1.0 && ts < 2001.0, "{ts}");
        let sliver = events.iter().find(|e| e["name"] == "wake" && e["ph"] == "X").unwrap();
        let (from, dur) = (sliver["ts"].as_f64().unwrap(), sliver["dur"].as_f64().unwrap());
        assert!(from <= ts && ts <= from + dur && sliver["tid"] == 8);
    }

    #[test]
    fn a_broadcast_s_arrows_share_one_sliver_and_cut_waits_get_none() {
        let mut profile = profile_with_timeline();
        let timeline = profile.timeline.as_mut().unwrap();
        // Two more waits ended by thread 8 at the same instant as the first (a broadcast),
        // and one cut to nothing.
        let mut same = timeline.spans[0].clone();
        same.tid = 10;
        timeline.spans.push(same);
        let mut cut = timeline.spans[0].clone();
        (cut.tid, cut.duration_ns) = (11, 0);
        timeline.spans.push(cut);
        let events = events(&profile);
        let slivers = events.iter().filter(|e| e["name"] == "wake" && e["ph"] == "X").count();
        let arrows = events.iter().filter(|e| e["ph"] == "f").count();
        assert_eq!((slivers, arrows), (1, 2));
    }

    #[test]
    fn a_snapshot_has_no_timeline_to_write() {
        let profile = Profile::new(ProfileKind::Snapshot, 42, "app".into());
        let err = write_trace_json(&profile, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("tracer record --output FILE.trace.json"), "{err}");
    }
}
