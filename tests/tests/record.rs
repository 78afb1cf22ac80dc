//! Real-kernel tests of `tracer record` on the pile-ups it was built for. They need root and
//! share the kernel, so they run one at a time (`--test-threads=1`); none skips.

use std::time::Duration;

use std::process::Command;

use tracer_tests::{
    C_WAKE_PATHS_SOURCE, Pileup, Profile, ProfileKind, ProfileStack, RaisedSysctl, TempDir, Traced,
    WaitKind, assert_svg, build_c, build_c_pileup, has_function, live_thread_ids, record_profile,
    start_c_pileup, start_futex_ping_pong, start_rust_pileup, start_workload, top_stacks, total_ns,
    total_waits, waker_rows, wakes_between,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_PILEUP: &str = env!("CARGO_BIN_EXE_rust-pileup");
const PING_PONG: &str = env!("CARGO_BIN_EXE_ping-pong");

/// Enough handlers that the pile-up dwarfs everything else in the process, as in the story (the
/// machine has 2 cores; they are blocked nearly all the time, so 32 cost little CPU).
const HANDLERS: usize = 32;
/// Long enough for thousands of handler waits and for the reporter to block in `send` many times.
const RECORD_DURATION: &str = "3s";
/// The workload outlives the recording (the tracer attaches after it starts and may take a
/// while to load its probes); its guard kills it when the test ends.
const WORKLOAD_SECONDS: f64 = 60.0;
/// Recording plus attaching, unwinding and symbolizing, with a wide margin for a loaded CI
/// machine; only a hang should reach it.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// The acceptance bar: the share of the handlers' futex time that must sit on stacks holding
/// both the handler function and the function that enqueues into the channel.
const MIN_ATTRIBUTED_SHARE: f64 = 0.90;

/// Records `pileup` (with `extra` options) and checks the acceptance: futex time
/// attributed to `handler` + `enqueue_fn`, and send time under `send_fn`.
fn record_and_check(
    label: &str,
    pileup: &Pileup,
    enqueue_fn: &str,
    send_fn: &str,
    extra: &[&str],
) -> tracer_tests::Traced {
    let dir = TempDir::new(label);
    let svg = dir.join("waits.svg");
    let mut args = vec!["--duration", RECORD_DURATION, "--output", svg.to_str().expect("utf-8")];
    args.extend(extra);
    let traced = record_profile(pileup.workload.pid(), &args, &dir, RECORD_TIMEOUT);
    let profile = &traced.profile;
    assert_eq!(profile.kind, ProfileKind::Recording);
    assert_eq!(profile.pid, pileup.workload.pid(), "the profile names another process");
    assert!(
        !profile.stacks.is_empty(),
        "the recording holds no stacks; tracer stdout:\n{}",
        traced.out.stdout
    );

    let is_futex = |s: &ProfileStack| s.kind == WaitKind::Futex;
    let is_attributed =
        |s: &ProfileStack| is_futex(s) && has_function(s, "handler") && has_function(s, enqueue_fn);
    let futex_total = total_ns(profile, is_futex);
    let attributed = total_ns(profile, is_attributed);
    let is_send = |s: &ProfileStack| s.kind == WaitKind::Send;
    let is_reporter_send = |s: &ProfileStack| is_send(s) && has_function(s, send_fn);
    let send_total = total_ns(profile, is_send);
    let reporter_send = total_ns(profile, is_reporter_send);

    let share = |part: u64, whole: u64| {
        if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
    };
    println!(
        "{label}: futex {attributed}/{futex_total} ns = {:.2}% on handler;{enqueue_fn}; \
         send {reporter_send}/{send_total} ns = {:.2}% under {send_fn}",
        100.0 * share(attributed, futex_total),
        100.0 * share(reporter_send, send_total),
    );

    assert!(
        futex_total > 0,
        "no futex time recorded; stacks:\n{}",
        top_stacks(profile, |_| true, 20)
    );
    assert!(
        share(attributed, futex_total) >= MIN_ATTRIBUTED_SHARE,
        "only {:.2}% of {futex_total} futex ns on stacks with handler and {enqueue_fn} (need \
         {:.0}%); heaviest futex stacks without them:\n{}",
        100.0 * share(attributed, futex_total),
        100.0 * MIN_ATTRIBUTED_SHARE,
        top_stacks(profile, |s| is_futex(s) && !is_attributed(s), 10)
    );
    // The handlers' waits end (the channel drains), and each is counted with its thread.
    let handler_waits = profile
        .stacks
        .iter()
        .filter(|s| is_attributed(s) && !s.in_progress)
        .map(|s| s.stats.waits)
        .sum::<u64>();
    assert!(handler_waits > 0, "no handler wait ended in the recording");
    let handler_threads = tracer_tests::thread_ids(profile, is_attributed);
    assert!(
        handler_threads.len() > 1,
        "the futex waits come from {} thread(s), not from the {HANDLERS} handlers",
        handler_threads.len()
    );
    assert!(
        reporter_send > 0,
        "no send stack contains {send_fn}; send stacks:\n{}",
        top_stacks(profile, is_send, 10)
    );
    // The reporter blocks in send from one place over and over: once a walk has read its
    // stack, the probes copy only that part of it as it goes to sleep again, and the walks
    // of those copies still reach the root.
    assert!(
        profile.counts.stack_partial > 0,
        "no stack was copied in part: {:?}; send stacks:\n{}",
        profile.counts,
        top_stacks(profile, is_send, 10)
    );
    let truncated_send = total_ns(profile, |s| is_reporter_send(s) && s.truncated);
    assert_eq!(
        truncated_send,
        0,
        "send stacks under {send_fn} stop before the root: {:?}\n{}",
        profile.counts,
        top_stacks(profile, is_send, 10)
    );
    assert_svg(&svg);
    traced
}

#[test]
fn rust_pileup_attributes_futex_and_send_waits() {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    record_and_check("rust-pileup", &pileup, "send_stat", "write_to_backend", &[]);
}

#[test]
fn c_pileup_attributes_futex_and_send_waits() {
    let build = TempDir::new("c-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let traced = record_and_check("c-pileup", &pileup, "enqueue_stat", "send_to_backend", &[]);
    assert!(!traced.profile.no_wakers && !traced.profile.wakers.is_empty(), "no wakers recorded");
}

/// Without the wake probe the handlers' waits end where they are switched back in, mostly
/// after the idle task, whose view holds none of the process's memory: their stacks come
/// from the copies their sleeps kept, and the report attributes them as with wakers.
#[test]
fn c_pileup_without_wakers_attributes_futex_and_send_waits() {
    let build = TempDir::new("c-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let traced = record_and_check(
        "c-pileup-no-wakers",
        &pileup,
        "enqueue_stat",
        "send_to_backend",
        &["--no-wakers"],
    );
    let (profile, stdout) = (&traced.profile, &traced.out.stdout);
    assert!(profile.no_wakers && profile.wakers.is_empty(), "{:?}", profile.wakers);
    assert_eq!(profile.counts.wakes_seen, 0, "{:?}", profile.counts);
    assert!(profile.counts.sleep_copies > 0, "no sleep kept a copy: {:?}", profile.counts);
    assert!(stdout.contains("with stacks, no wakers (--no-wakers)"), "{stdout}");
}

/// Without the wake probe, a thread whose waits all end short (a ping-pong's handoffs)
/// sleeps without copying its stack after its first few waits: copies at every handoff
/// would cost it most of what leaving the probe out saves.
#[test]
fn short_handoffs_without_wakers_keep_no_copies() {
    let workload = start_futex_ping_pong(PING_PONG, WORKLOAD_SECONDS, &[]);
    let dir = TempDir::new("ping-pong-no-wakers");
    let traced = record_profile(
        workload.pid(),
        &["--duration", "2s", "--mode", "exact", "--no-wakers"],
        &dir,
        RECORD_TIMEOUT,
    );
    let counts = &traced.profile.counts;
    println!("{counts:?}");
    // Tens of thousands of handoffs a second here: a copy at each would be as many. A
    // thread's first sleeps copy, and so do those after a wait that lasted the threshold
    // (a player descheduled for a while).
    assert!(
        counts.short_waits >= 10_000 && counts.sleep_copies * 100 < counts.short_waits,
        "{} short waits, {} sleeps copied",
        counts.short_waits,
        counts.sleep_copies
    );
}

/// Without wakers, a long wait right after a run of short ones kept no copy of its stack at
/// its sleep; the tracer copies it from outside while it sleeps, so the ponger's waits out
/// the pinger's pauses are reported where they wait (`hit`), not as unreadable stacks.
#[test]
fn a_long_wait_after_short_handoffs_without_wakers_keeps_its_stack() {
    // Every 10,000 round trips (a fraction of a second here) the pinger sleeps 100 ms: two
    // to five pauses a second (CI once ran the traced ping-pong at 21,000 round trips a
    // second, and every 20,000 made only 4 pauses in the 4 s). Their sleeps came after
    // runs of short waits: copied late, not at the sleep.
    pauses_keep_their_stacks(Pauses {
        every: "10000",
        ms: "100",
        recorded: "4s",
        ended: 5,
        copied_late: 4,
    });
}

/// The looks for such waits come seldom once none has come for a while (each wakes the
/// tracer's CPU): a long wait after seconds of handoffs alone still gets its stack, copied
/// at the next look.
#[test]
fn a_long_wait_after_a_quiet_spell_without_wakers_keeps_its_stack() {
    // Every 100,000 round trips (seconds here, longer than the looks' quiet threshold) the
    // pinger sleeps a second, longer than the gap between quiet looks.
    pauses_keep_their_stacks(Pauses {
        every: "100000",
        ms: "1000",
        recorded: "10s",
        ended: 1,
        copied_late: 1,
    });
}

/// A futex ping-pong whose pinger pauses `ms` every `every` round trips, recorded for
/// `recorded` without wakers; at least `ended` pauses end in it and `copied_late` waits
/// are copied late.
struct Pauses {
    every: &'static str,
    ms: &'static str,
    recorded: &'static str,
    ended: u64,
    copied_late: u64,
}

/// Records `pauses` and checks that the ponger's waits out the pauses are reported at
/// `hit` with their stacks.
fn pauses_keep_their_stacks(pauses: Pauses) {
    let Pauses { every, ms, recorded, ended, copied_late } = pauses;
    let extra = ["--pause-every", every, "--pause-ms", ms];
    let workload = start_futex_ping_pong(PING_PONG, WORKLOAD_SECONDS, &extra);
    let dir = TempDir::new("ping-pong-pauses");
    let traced = record_profile(
        workload.pid(),
        &["--duration", recorded, "--mode", "exact", "--no-wakers"],
        &dir,
        RECORD_TIMEOUT,
    );
    let profile = &traced.profile;
    let counts = &profile.counts;
    println!("{counts:?}");
    // A player descheduled for a few milliseconds adds a long wait that may end before
    // the tracer's look: without a stack, and counted (a loaded machine makes more of
    // them). The pauses are the waits of half a pause or more: every one is at `hit`.
    let long = |s: &ProfileStack| s.kind == WaitKind::Futex && !s.in_progress;
    let at_hit = |s: &ProfileStack| long(s) && has_function(s, "hit");
    let half_pause_ns = ms.parse::<u64>().expect("a pause in ms") * 1_000_000 / 2;
    let pauses_at_hit = waits_of_at_least(profile, at_hit, half_pause_ns);
    let pauses = waits_of_at_least(profile, long, half_pause_ns);
    println!("{}", top_stacks(profile, long, 5));
    assert!(
        pauses_at_hit >= ended && pauses_at_hit == pauses,
        "waits of half a pause or more: {pauses_at_hit} at hit of {pauses}"
    );
    assert!(counts.late_copies >= copied_late, "{} late copies", counts.late_copies);
}

/// The waits on the stacks `pred` picks that lasted about `at_least_ns` or more: those of
/// its log2 bucket and above.
fn waits_of_at_least(
    profile: &Profile,
    pred: impl Fn(&ProfileStack) -> bool,
    at_least_ns: u64,
) -> u64 {
    let from = tracer::model::log2_bucket(at_least_ns);
    let stacks = profile.stacks.iter().filter(|stack| pred(stack));
    stacks.flat_map(|stack| stack.stats.log2_histogram.range(from..).map(|(_, waits)| waits)).sum()
}

/// Wakes across CPUs: with the ping-pong's two threads pinned to different CPUs, the
/// wakee's CPU is idle at each wake, so the kernel queues the wake to it and runs the
/// wake's second half (`sched_wakeup`) there, away from the waker. The queued-wake probe
/// (`csd_queue_cpu`) takes them in the waker's context: the waits end with their stacks
/// and their waker, as on one CPU.
#[test]
fn wakes_queued_to_another_cpu_keep_their_stacks_and_wakers() {
    // 200 handoffs a second: each wait about 5 ms, over the 1 ms threshold.
    let (traced, _) = record_ping_pong_across_cpus(&["--rate", "200"], "3s");
    let profile = &traced.profile;
    let counts = &profile.counts;
    let at_hit =
        |s: &ProfileStack| s.kind == WaitKind::Futex && !s.in_progress && has_function(s, "hit");
    let waits = total_waits(profile, at_hit);
    let woken = wakes_between(profile, |site| site.contains("hit"), |site| site.contains("hit"));
    println!("{waits} waits at hit, {woken} woken by hit; {counts:?}");
    // About 600 long waits in 3 s; without the queued-wake probe none would have a waker.
    assert!(
        waits >= 300 && woken * 10 >= waits * 9,
        "{waits} waits at hit, {woken} with their waker; wakers {:?}; stacks:\n{}",
        waker_rows(profile),
        top_stacks(profile, |s| s.kind == WaitKind::Futex, 5)
    );
    assert_eq!(counts.stack_unreadable, 0, "{counts:?}");
}

/// Short waits woken across CPUs whose sleep kept a stack copy (timed waits): the queued
/// wake ends them, and the span samples it is asked for are sent with the sleeper's
/// registers, read from the waker's side, not dropped.
#[test]
fn short_waits_woken_across_cpus_send_their_span_samples() {
    // Full speed: every wait short; timed, so every sleep keeps a copy.
    let (traced, tids) = record_ping_pong_across_cpus(&["--timed"], "2s");
    let counts = &traced.profile.counts;
    println!("threads {tids:?}: {counts:?}");
    assert!(
        counts.short_waits >= 1000 && counts.span_samples >= 1 && counts.span_samples_dropped == 0,
        "short waits {}, span samples {} sent, {} dropped: {counts:?}",
        counts.short_waits,
        counts.span_samples,
        counts.span_samples_dropped
    );
}

/// Records the futex ping-pong, started with `args`, for `duration` in exact mode, with its
/// two threads pinned to CPUs of their own, so that every wake of one by the other is
/// queued to the wakee's idle CPU; returns the recording and the threads' ids.
fn record_ping_pong_across_cpus(args: &[&str], duration: &str) -> (Traced, Vec<u32>) {
    let workload = start_futex_ping_pong(PING_PONG, WORKLOAD_SECONDS, args);
    let tids = pin_threads_to_their_own_cpus(workload.pid());
    let dir = TempDir::new("ping-pong-across-cpus");
    let args = ["--duration", duration, "--mode", "exact"];
    (record_profile(workload.pid(), &args, &dir, RECORD_TIMEOUT), tids)
}

/// Pins each thread of `pid` (there must be two: the ping-pong's) to a CPU of its own;
/// returns their ids.
fn pin_threads_to_their_own_cpus(pid: u32) -> Vec<u32> {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    assert!(cpus >= 2, "this test needs two CPUs, the machine has {cpus}");
    let tids = live_thread_ids(pid);
    assert_eq!(tids.len(), 2, "the ping-pong's threads: {tids:?}");
    for (cpu, &tid) in tids.iter().enumerate() {
        // SAFETY: a zeroed cpu_set_t with one CPU set, passed with its size.
        let pinned = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of_val(&set), &set)
        };
        assert_eq!(pinned, 0, "pin thread {tid} to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    tids
}

/// The target lives this long: long enough for the tracer to load and attach its probes first,
/// short against the recording below so that it exits mid-recording.
const EXITING_WORKLOAD_SECONDS: f64 = 2.0;
/// Far longer than the target lives; the tracer must stop when the target exits, not here.
const EXIT_RECORD_DURATION: &str = "10s";
/// Shorter than the requested recording, so a tracer that waits out --duration fails the test.
const EXIT_TIMEOUT: Duration = Duration::from_secs(8);
/// Generous bound on waiting for the workload itself to exit after its own deadline.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn target_exit_ends_recording_and_writes_reports() {
    target_exit_ends_recording(&[]);
}

#[test]
fn target_exit_ends_a_sampled_recording_and_writes_reports() {
    target_exit_ends_recording(&["--mode", "sampled"]);
}

/// Sampled: threads blocked until their process exits end their waits with it, each with
/// the time the reads saw (the waits in progress at the last read were dropped: the
/// profile said "no completed waits").
#[test]
fn threads_blocked_until_their_process_exits_keep_their_sampled_waits() {
    // Long against the tracer's start on a loaded machine.
    let child = tracer_tests::start_blocked_until_exit(6.0);
    let pid = child.pid();
    let reaper = child.reap_in_background(REAP_TIMEOUT);
    let dir = TempDir::new("exit-sampled");
    let args = ["--mode", "sampled", "--duration", EXIT_RECORD_DURATION];
    let traced = record_profile(pid, &args, &dir, EXIT_TIMEOUT);
    let profile = &traced.profile;
    assert!(profile.target_exited, "the profile does not say the target exited");
    let futex = |stack: &&ProfileStack| stack.kind == WaitKind::Futex && !stack.in_progress;
    let threads: std::collections::BTreeSet<u64> =
        profile.stacks.iter().filter(futex).flat_map(|s| s.stats.threads.clone()).collect();
    // The main thread's sleep is no watched wait: the three lockers, each blocked for all
    // the recording saw (give or take a read).
    let blocked = Duration::from_nanos(total_ns(profile, |stack| futex(&stack)));
    println!("{} threads, {blocked:?} blocked in {:?}", threads.len(), profile.duration);
    assert_eq!(threads.len(), 3, "stacks:\n{}", top_stacks(profile, |_| true, 20));
    assert!(
        blocked >= profile.duration.mul_f64(3.0 * 0.8),
        "{blocked:?} of 3 threads' waits in {:?}",
        profile.duration
    );
    assert!(profile.stacks.iter().all(|stack| !stack.in_progress));
    let status = reaper.join().expect("reaping the python program");
    assert!(status.success(), "it exited with {status}");
}

fn target_exit_ends_recording(mode: &[&str]) {
    let Pileup { workload, backend } =
        start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, EXITING_WORKLOAD_SECONDS);
    let pid = workload.pid();
    // Reap it the moment it exits, as its real parent would, so it does not linger as a zombie.
    let reaper = workload.reap_in_background(REAP_TIMEOUT);

    let dir = TempDir::new("exit");
    let args = [mode, &["--duration", EXIT_RECORD_DURATION]].concat();
    let traced = record_profile(pid, &args, &dir, EXIT_TIMEOUT);
    println!(
        "tracer returned after {:?}; the target exits {EXITING_WORKLOAD_SECONDS}s after it started",
        traced.out.elapsed
    );
    let profile = &traced.profile;
    assert!(profile.target_exited, "the profile does not say the target exited");
    assert!(
        profile.duration < Duration::from_secs(10),
        "the recording lasted {:?}, past the target's exit",
        profile.duration
    );
    assert!(
        profile.stacks.iter().any(|s| has_function(s, "send_stat")),
        "what was recorded before the exit is lost; stacks:\n{}",
        top_stacks(profile, |_| true, 20)
    );
    assert!(
        profile.stacks.iter().all(|stack| !stack.in_progress),
        "nothing waits in a process that exited"
    );

    let status = reaper.join().unwrap_or_else(|_| panic!("reaping rust-pileup (pid {pid}) failed"));
    assert!(status.success(), "rust-pileup exited with {status}");
    drop(backend);
}

/// Each way an exact recording sees a wait end keeps the wait's stack: a waker in the process
/// (its view of the shared memory), a timer, another process over a socket, and another
/// process on a shared futex (both from the copy kept at the sleep). Each wait loop blocks
/// nearly all the time, at its own call site.
#[test]
fn every_way_a_wait_ends_keeps_its_stack() {
    record_wake_paths(&[], &[]);
}

/// As above without the wake probe: the waits a thread of the process ends end at their
/// switch in too, read from the copy kept at their sleep when the memory is not at hand.
#[test]
fn every_way_a_wait_ends_keeps_its_stack_without_wakers() {
    record_wake_paths(&[], &["--no-wakers"]);
}

/// The same five wait loops on threads whose ids are equal modulo `WAIT_START_SLOTS`, so all
/// five share one wait word: a wait taken while another holds the word goes to task storage,
/// and each loop's waits must still end with their stacks, covering nearly all the recording.
/// Thread ids reach that far on hosts whose pid_max is systemd's 4194304; this machine's may be
/// lower, so it is raised for the test.
#[test]
fn threads_sharing_a_wait_word_keep_every_wait() {
    let stride = tracer_common::WAIT_START_SLOTS;
    let _pid_max = RaisedSysctl::at_least("/proc/sys/kernel/pid_max", 4194304);
    let tids = record_wake_paths(&[stride.to_string()], &[]);
    let most_in_one_slot = tids
        .iter()
        .map(|tid| tids.iter().filter(|other| *other % stride == tid % stride).count())
        .max();
    assert_eq!(most_in_one_slot, Some(5), "the five wait loops share no slot: tids {tids:?}");
}

/// Starts c-wake-paths with `extra` arguments after its seconds, records it in exact mode
/// (with `options`) and checks that each wait loop's waits ended with their stacks; returns
/// the workload's thread ids as they were while recorded.
fn record_wake_paths(extra: &[String], options: &[&str]) -> Vec<u32> {
    let build = TempDir::new("wake-paths-build");
    let bin = build_c(build.path(), C_WAKE_PATHS_SOURCE, "c-wake-paths");
    let mut cmd = Command::new(&bin);
    cmd.arg(WORKLOAD_SECONDS.to_string()).args(extra);
    let workload = start_workload("c-wake-paths", cmd);
    let tids = live_thread_ids(workload.pid());
    let dir = TempDir::new("wake-paths");
    let mut args = vec!["--duration", RECORD_DURATION, "--mode", "exact"];
    args.extend(options);
    let traced = record_profile(workload.pid(), &args, &dir, RECORD_TIMEOUT);
    let profile = &traced.profile;
    let recorded_ns = profile.duration.as_nanos() as u64;
    for (site, kind, ended_by) in [
        ("signalled_wait", WaitKind::Futex, "a thread of the process"),
        ("timed_wait", WaitKind::Futex, "its timeout"),
        ("peer_wait", WaitKind::Recv, "another process's send"),
        ("shared_wait", WaitKind::Futex, "another process's signal on a shared futex"),
    ] {
        let at_site = |s: &ProfileStack| s.kind == kind && has_function(s, site);
        let ended = |s: &ProfileStack| at_site(s) && !s.in_progress;
        let blocked = total_ns(profile, at_site);
        let waits = total_waits(profile, ended);
        println!("{site}: {waits} waits ended, {blocked} ns blocked of {recorded_ns}");
        // Each loop waits 30-60 ms at a time: dozens of waits in 3 s, nearly all of it blocked.
        assert!(
            waits >= 10 && blocked as f64 >= 0.8 * recorded_ns as f64,
            "{site} (waits ended by {ended_by}): {waits} waits, {blocked} ns of {recorded_ns} \
             attributed (threads {tids:?}); stacks:\n{}",
            top_stacks(profile, |s| s.kind == kind, 10)
        );
    }
    // With wakers, the signalled loop's waits name the signalling thread as their waker,
    // whether their wake ran on its CPU or was queued to theirs, and whether the wait was
    // in its word or (sharing the word) in task storage. All but one: the wait in progress
    // at the attach is handed to the probes with its copy a moment later, and a wake
    // queued before the copy is in place has no start to send its waker under.
    if !options.contains(&"--no-wakers") {
        let signalled = total_waits(profile, |s| {
            s.kind == WaitKind::Futex && has_function(s, "signalled_wait") && !s.in_progress
        });
        let woken =
            wakes_between(profile, |site| site == "signalled_wait", |site| site == "signaller");
        println!("signalled_wait: {signalled} waits ended, {woken} with the signaller's wake");
        assert!(
            signalled >= 10 && woken + 1 >= signalled,
            "signalled_wait: {woken} of {signalled} waits have the signaller for their waker \
             (threads {tids:?}); wakers {:?}",
            waker_rows(profile)
        );
    }
    // The echo loop's waits are mostly short: some of its thread's first sleep copies are
    // sent as span samples, walked and never reported as waits; its long waits (a held
    // echo, 20 ms every 100 ms) are reported as the others are.
    let at_echo = |s: &ProfileStack| s.kind == WaitKind::Recv && has_function(s, "echo_wait");
    let echo_waits = total_waits(profile, |s| at_echo(s) && !s.in_progress);
    // Ended ones only: a wait still in progress when the recording stops is shown at any
    // age, and the echo loop is often in a short one.
    let shortest_echo = profile
        .stacks
        .iter()
        .filter(|s| at_echo(s) && !s.in_progress)
        .map(|s| s.stats.min_ns)
        .min();
    let counts = &profile.counts;
    println!("echo_wait: {echo_waits} long waits, the shortest {shortest_echo:?} ns; {counts:?}");
    assert!(
        echo_waits >= 10
            && shortest_echo.is_some_and(|ns| ns >= 1_000_000)
            && counts.span_samples >= 1,
        "echo_wait: {echo_waits} long waits (the shortest {shortest_echo:?} ns), {} span \
         samples (threads {tids:?}); stacks:\n{}",
        counts.span_samples,
        top_stacks(profile, |s| s.kind == WaitKind::Recv, 10)
    );
    // Its round trips sleep at two places in turn (a frame apart): with a span kept for
    // each, few sleeps copy the whole stack (about half did with one span per thread).
    assert!(
        counts.sleep_copies_whole * 5 < counts.short_waits,
        "{} of {} sleeps copied whole (threads {tids:?})",
        counts.sleep_copies_whole,
        counts.short_waits
    );
    assert_eq!(
        (counts.stack_unreadable, counts.unwind_truncated),
        (0, 0),
        "every long wait's stack was read and unwound (threads {tids:?}); tracer stdout:\n{}",
        traced.out.stdout
    );
    tids
}
