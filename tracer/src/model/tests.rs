//! Unit tests of the data model: stats, aggregation, call sites, merging.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tracer_common::WaitKind;

use super::{symbolize::shared_futexes, *};
use crate::{
    report::fixtures::fixture_profile,
    stacks::{Frame, UNKNOWN_FRAME},
};

pub(crate) fn frame(name: &str, main: bool) -> Frame {
    Frame {
        name: name.to_string(),
        module: if main { "app".into() } else { "libc.so.6".into() },
        module_is_main: main,
        file: None,
        line: None,
        inlined: false,
        address: 0,
    }
}

pub(crate) fn stack(names: &[(&str, bool)], kind: WaitKind, tids: &[(u32, u64)]) -> ProfileStack {
    let mut stats = WaitStats::default();
    for &(tid, ns) in tids {
        stats.add(u64::from(tid), ns);
    }
    ProfileStack {
        frames: names.iter().map(|&(n, m)| frame(n, m)).collect(),
        kind,
        object: None,
        truncated: false,
        in_progress: false,
        stats,
        process: None,
    }
}

#[test]
fn stats_count_total_min_max_and_threads() {
    let mut stats = WaitStats::default();
    stats.add(1, 20);
    stats.add(2, 30);
    stats.add(1, 10);
    assert_eq!((stats.waits, stats.total_ns, stats.min_ns, stats.max_ns), (3, 60, 10, 30));
    assert_eq!(stats.threads.len(), 2);
    // 10 and 20 fall in [8, 16) and [16, 32); 30 in [16, 32).
    assert_eq!(stats.log2_histogram, [(3, 1), (4, 2)].into());
    assert!(!stats.lower_bound);
}

#[test]
fn merged_stats_keep_the_extremes_and_the_lower_bound_mark() {
    let mut exact = WaitStats::default();
    exact.add(1, 50);
    let mut estimated = WaitStats::default();
    estimated.add_lower_bound(2, 5);
    estimated.add_lower_bound(3, 500);
    exact.merge(&estimated);
    exact.merge(&WaitStats::default());
    assert_eq!((exact.waits, exact.min_ns, exact.max_ns), (3, 5, 500));
    assert_eq!(exact.log2_histogram.values().sum::<u64>(), 3);
    assert!(exact.lower_bound);
    assert_eq!(exact.threads.len(), 3);
}

#[test]
fn raw_stacks_aggregate_by_addresses_and_kind() {
    let mut aggregate = WaitAggregate::default();
    let key = |kind| StackKey {
        addresses: vec![1, 2, 3],
        kind,
        object: WaitObject::None,
        truncated: false,
        in_progress: false,
    };
    aggregate.add(key(WaitKind::Futex), 7, 100);
    aggregate.add(key(WaitKind::Futex), 8, 50);
    aggregate.add(key(WaitKind::Send), 7, 5);
    assert_eq!(aggregate.stacks.len(), 2);
    assert_eq!(aggregate.stacks[&key(WaitKind::Futex)].total_ns, 150);
}

#[test]
fn only_shared_futexes_count_as_shared() {
    let mut stacks = HashMap::new();
    let mut key = |object, tids: &[u32]| {
        let mut stats = WaitStats::default();
        for &tid in tids {
            stats.add(u64::from(tid), 1);
        }
        let key = StackKey {
            addresses: vec![tids[0] as u64],
            kind: WaitKind::Futex,
            object,
            truncated: false,
            in_progress: false,
        };
        stacks.insert(key, stats);
    };
    key(WaitObject::Futex(0x10), &[1, 2]);
    key(WaitObject::Futex(0x20), &[3]);
    key(WaitObject::Futex(0x30), &[4]);
    key(WaitObject::Futex(0x30), &[5]);
    key(WaitObject::None, &[6, 7]);
    let shared = shared_futexes(&stacks);
    assert_eq!(shared, [0x10, 0x30].into_iter().collect());
}

#[test]
fn a_futex_once_shared_stays_named_in_the_profiles_after() {
    use crate::{
        objects::locks::LockNamer,
        stacks::{ProcessImage, StackSymbolizer},
    };
    let image = ProcessImage::snapshot(std::process::id()).unwrap();
    let on_heap = Box::new(0u32);
    let address = std::ptr::from_ref(&*on_heap) as u64;
    let key = StackKey {
        addresses: vec![],
        kind: WaitKind::Futex,
        object: WaitObject::Futex(address),
        truncated: false,
        in_progress: false,
    };
    let waits = |tids: &[u32]| {
        let mut aggregate = WaitAggregate::default();
        for &tid in tids {
            aggregate.add(key.clone(), tid, 1_000);
        }
        aggregate
    };
    let object_of = |aggregate: WaitAggregate, locks: &mut LockNamer| {
        let profile = aggregate.into_profile(
            Profile::new(ProfileKind::Snapshot, std::process::id(), "test".into()),
            &image,
            &mut StackSymbolizer::new(),
            locks,
        );
        profile.stacks[0].object.clone()
    };
    // One waiter alone names nothing shared (a thread's own parker).
    assert_eq!(object_of(waits(&[1]), &mut LockNamer::new()), None);
    // Two waiters name the lock; a later profile with one waiter (a moment of the same
    // lock) names it alike.
    let mut locks = LockNamer::new();
    let shared = object_of(waits(&[1, 2]), &mut locks);
    assert!(shared.as_deref().is_some_and(|name| name.contains("0x")), "{shared:?}");
    assert_eq!(object_of(waits(&[2]), &mut locks), shared);
}

#[test]
fn call_site_skips_libc_and_rust_std() {
    let stack = stack(
        &[
            ("start_thread", false),
            ("std::sys::thread::unix::Thread::new::thread_start", true),
            ("app::handler", true),
            ("app::send_stat", true),
            ("std::sync::mpmc::array::Channel<T>::send", true),
            ("<std::sync::mpsc::SyncSender<T>>::send", true),
            ("syscall", false),
        ],
        WaitKind::Futex,
        &[(1, 1)],
    );
    assert_eq!(stack.call_site(), "app::send_stat");
}

#[test]
fn crates_named_like_the_runtime_are_still_the_program() {
    let stack =
        stack(&[("rust_pileup::send_stat", true), ("syscall", false)], WaitKind::Futex, &[]);
    assert_eq!(stack.call_site(), "rust_pileup::send_stat");
}

#[test]
fn call_site_falls_back_to_innermost_named_frame() {
    let stack = stack(&[("clone3", false), ("__lll_lock_wait", false)], WaitKind::Futex, &[]);
    assert_eq!(stack.call_site(), "__lll_lock_wait");
}

#[test]
fn identical_symbolized_stacks_merge_and_sort_heaviest_first() {
    let base = Profile {
        kind: ProfileKind::Recording,
        pid: 1,
        start_unix_ns: None,
        command_line: None,
        comm: "app".into(),
        cgroup: None,
        duration: Duration::from_secs(1),
        min_wait: Duration::from_millis(1),
        sampling: None,
        no_wakers: false,
        target_exited: false,
        stacks: vec![],
        below_threshold: vec![],
        counts: TraceCounts::default(),
        thread_counts: ThreadCounts::default(),
        endpoint_states: BTreeMap::new(),
        thread_names: BTreeMap::new(),
        wakers: Vec::new(),
        modules: BTreeMap::new(),
        process_modules: BTreeMap::new(),
        lock_addresses: BTreeMap::new(),
        chains: Vec::new(),
        processes: Vec::new(),
        timeline: None,
        python: None,
        backed_up: Default::default(),
    };
    let a = stack(&[("main", true), ("f", true)], WaitKind::Futex, &[(1, 10)]);
    let b = stack(&[("main", true), ("f", true)], WaitKind::Futex, &[(2, 15)]);
    let c = stack(&[("main", true), ("g", true)], WaitKind::Send, &[(3, 100)]);
    let profile = Profile::from_symbolized(base, [a, b, c]);
    assert_eq!(profile.stacks.len(), 2);
    assert_eq!(profile.stacks[0].kind, WaitKind::Send);
    assert_eq!(profile.stacks[1].stats.total_ns, 25);
    assert_eq!(profile.stacks[1].stats.threads.len(), 2);
}

#[test]
fn unknown_frames_are_counted_once_per_address_in_every_window() {
    let mut profile = fixture_profile();
    let unknown = profile
        .stacks
        .iter()
        .flat_map(|stack| &stack.frames)
        .filter(|frame| frame.name == UNKNOWN_FRAME)
        .count();
    assert_eq!(unknown, 1, "the fixture has one [unknown] frame");
    assert_eq!(profile.unknown_addresses(), 1);
    // The same address in another stack is still one unknown address.
    let again = profile
        .stacks
        .iter()
        .find(|stack| stack.frames.iter().any(|frame| frame.name == UNKNOWN_FRAME))
        .cloned()
        .expect("the fixture's truncated stack");
    profile.stacks.push(again);
    assert_eq!(profile.unknown_addresses(), 1);
    profile.stacks.retain(|stack| stack.frames.iter().all(|frame| frame.name != UNKNOWN_FRAME));
    assert_eq!(profile.unknown_addresses(), 0);
}

#[test]
fn waits_added_at_once_are_the_waits_added_one_by_one() {
    let waits = [(7, Some(5_000)), (3, None), (9, Some(40)), (7, Some(1 << 20)), (1, None)];
    let mut one_by_one = WaitStats::default();
    for (tid, age) in waits {
        match age {
            Some(duration_ns) => one_by_one.add_lower_bound(tid, duration_ns),
            None => one_by_one.add_unaged(tid),
        }
    }
    let mut at_once = WaitStats::default();
    at_once.add_lower_bounds(waits);
    assert_eq!(at_once, one_by_one);
    // And onto waits already there.
    let mut onto = WaitStats::default();
    onto.add_lower_bound(2, 100);
    let mut expected = onto.clone();
    onto.add_lower_bounds(waits);
    expected.merge(&at_once);
    assert_eq!(onto, expected);
}

#[test]
fn one_waiter_is_counted_in_the_singular() {
    assert_eq!(counted(1, "threads"), "1 thread");
    assert_eq!(counted(0, "threads"), "0 threads");
    assert_eq!(counted(300, "goroutines"), "300 goroutines");
    assert_eq!(counted(1, "goroutines"), "1 goroutine");
}

#[test]
fn a_goroutine_waits_reason_is_what_its_object_says_before_what_it_names() {
    assert_eq!(go_wait_reason("chan send on chan []uint8 16/16"), "chan send");
    assert_eq!(go_wait_reason("sync.Mutex.Lock on main.statsMu"), "sync.Mutex.Lock");
    assert_eq!(go_wait_reason("IO wait 10.0.0.5:80"), "IO wait");
    assert_eq!(go_wait_reason("IO wait"), "IO wait");
    assert_eq!(go_wait_reason("select"), "select");
    assert_eq!(go_wait_reason("syscall write on pipe:[4711]"), "syscall write");
    assert_eq!(go_wait_reason("syscall"), "syscall");
}

#[test]
fn a_goroutine_in_a_system_call_waits_on_a_pipe_as_on_an_endpoint() {
    let endpoint = |object| endpoint_in_object(WaitKind::Goroutine, object);
    assert_eq!(endpoint("syscall write on pipe:[4711]"), Some("pipe:[4711]"));
    assert_eq!(endpoint("IO wait 10.0.0.5:80"), Some("10.0.0.5:80"));
    // A file has no other end; a call whose thread was not found names nothing.
    assert_eq!(endpoint("syscall fsync on /var/lib/app/journal"), None);
    assert_eq!(endpoint("syscall"), None);
    assert_eq!(
        go_syscall_in_object("syscall write on pipe:[4711]"),
        Some(("write", Some("pipe:[4711]")))
    );
    assert_eq!(go_syscall_in_object("syscall nanosleep"), Some(("nanosleep", None)));
    assert_eq!(go_syscall_in_object("sync.Mutex.Lock on main.mu"), None);
}

#[test]
fn a_library_mapped_at_different_places_in_several_processes_has_no_one_range() {
    let module = |start: u64, file_offset: u64| ModuleInfo {
        path: "/usr/lib/libc.so.6".to_string(),
        build_id: Some("abcd".to_string()),
        start,
        end: start + 0x1000,
        file_offset,
    };
    let process = |pid: u32, libc: ModuleInfo, app: ModuleInfo| {
        let mut profile = Profile::new(ProfileKind::Snapshot, pid, "app".to_string());
        profile.modules.insert("libc.so.6".to_string(), libc);
        profile.modules.insert("app".to_string(), ModuleInfo { path: "/app".into(), ..app });
        profile
    };
    let merged = Profile::of_processes(vec![
        process(1, module(0x7f00_0000, 0x28000), module(0x1000, 0)),
        process(2, module(0x7e00_0000, 0x28000), module(0x1000, 0)),
    ]);
    let libc = &merged.modules["libc.so.6"];
    assert_eq!((libc.start, libc.end, libc.file_offset), (0, 0, 0));
    assert_eq!(libc.build_id.as_deref(), Some("abcd"), "the file is still named");
    // The same place in both (a binary without ASLR): kept.
    let app = &merged.modules["app"];
    assert_eq!((app.start, app.end), (0x1000, 0x2000));
    // Two builds of one name: no one build id.
    let mut other_build = module(0x7f00_0000, 0x28000);
    other_build.build_id = Some("ef01".to_string());
    let mut joined = module(0x7f00_0000, 0x28000);
    joined.join_place(&other_build);
    assert_eq!((joined.start, joined.build_id), (0x7f00_0000, None));
}

#[test]
fn the_losses_are_the_counters_before_the_first_one_seen() {
    let mut counts = TraceCounts::default();
    let names: Vec<&str> = counts.fields_mut().into_iter().map(|(name, _)| name).collect();
    // pprof's "lost:" comment takes the first LOSSES; reads_lost was once left to "seen:".
    assert_eq!(names.iter().position(|&name| name == "waits_started"), Some(TraceCounts::LOSSES));
    assert!(names[..TraceCounts::LOSSES].contains(&"reads_lost"));
    assert!(names[..TraceCounts::LOSSES].contains(&"thread_reads_failed"));
    assert!(names[..TraceCounts::LOSSES].contains(&"waits_unread"));
    assert!(!names[..TraceCounts::LOSSES].contains(&"waits_at_last_place"));
}

#[test]
fn several_processes_keep_the_most_reads_and_every_interpreters_losses() {
    let process = |pid: u32, reads: u64, python: Option<(&str, u64)>| {
        let mut profile = Profile::new(ProfileKind::Recording, pid, "app".to_string());
        profile.sampling = Some(Sampling { period: Duration::from_millis(20), reads });
        profile.python = python.map(|(version, unreadable_frames)| PythonInfo {
            version: version.to_string(),
            missing: None,
            unreadable_frames,
            truncated_stacks: 1,
        });
        profile
    };
    // The last process joined late: 3 reads, not the recording's 100.
    let merged = Profile::of_processes(vec![
        process(1, 100, Some(("3.11", 2))),
        process(2, 40, Some(("3.12", 1))),
        process(3, 3, Some(("3.11", 0))),
    ]);
    assert_eq!(merged.sampling.map(|sampling| sampling.reads), Some(100));
    let python = merged.python.expect("the interpreters' line");
    assert_eq!(python.version, "3.11, 3.12");
    assert_eq!((python.unreadable_frames, python.truncated_stacks), (3, 3));
}
