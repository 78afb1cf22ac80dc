use std::hint::black_box;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::*;

/// x86-64 syscall numbers the waits below block in.
const SYS_FUTEX: i64 = 202;
const SYS_CLOCK_NANOSLEEP: i64 = 230;

/// How far below the true blocked time the scheduler's estimate may land: the target's last
/// `update_curr` and our own clock reading are both a little late, by far less than this.
const AGE_TOLERANCE: Duration = Duration::from_millis(50);

/// What the CPUs' scheduler clocks left out (interrupt, softirq and steal time: what
/// `rq_clock_task`, hence an age, does not count) since it was taken, from /proc/stat. On
/// this VM under load (a build on both CPUs) steal alone reached a tenth of a 1.2 s sleep.
struct LeftOutTime(Vec<u64>);

impl LeftOutTime {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
        // `cpuN user nice system idle iowait irq softirq steal …`, in clock ticks.
        let per_cpu = stat.lines().filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        });
        Self(
            per_cpu
                .map(|line| {
                    let fields: Vec<u64> =
                        line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
                    fields.get(5..8).map_or(0, |left_out| left_out.iter().sum())
                })
                .collect(),
        )
    }

    /// The most any one CPU's clock left out since `self`, a tick more for the counters'
    /// rounding.
    fn since(&self) -> Duration {
        let now = Self::now();
        let ticks = now.0.iter().zip(&self.0).map(|(now, then)| now.saturating_sub(*then)).max();
        // SAFETY: sysconf only reads a constant of the system.
        let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
        Duration::from_nanos((ticks.unwrap_or(0) + 1) * 1_000_000_000 / per_second.max(1))
    }
}

/// Slack above the true blocked time: the per-CPU scheduler clocks of this VM drift apart
/// by up to ~14 ms (steal time), and the calibration against the slowest one can be a
/// little stale when other tests keep both CPUs busy.
const AGE_SLACK_ABOVE: Duration = Duration::from_millis(20);

/// Stack of each pile-up thread: small, so that thousands fit, as in a thread-per-connection
/// server with tuned stacks.
const PILE_UP_STACK: usize = 64 << 10;

#[test]
fn syscall_lines_parse() {
    assert_eq!(parse_syscall("running\n"), Some(ThreadSyscall::Running));
    assert_eq!(
        parse_syscall("-1 0x7ffd5a3c1e08 0x7f8e1b2a1f3d\n"),
        Some(ThreadSyscall::NotInSyscall { sp: 0x7ffd_5a3c_1e08, pc: 0x7f8e_1b2a_1f3d })
    );
    assert_eq!(
        parse_syscall(
            "202 0x55d0c2a4b188 0x189 0x0 0x0 0x0 0xffffffff 0x7f8e1a3fdc40 0x7f8e1b2a1f3d\n"
        ),
        Some(ThreadSyscall::Blocked(SyscallState {
            nr: 202,
            args: [0x55d0_c2a4_b188, 0x189, 0, 0, 0, 0xffff_ffff],
            sp: 0x7f8e_1a3f_dc40,
            pc: 0x7f8e_1b2a_1f3d,
        }))
    );
    for garbage in [
        "",
        "sleeping",
        "202",
        "202 0x1 0x2 0x3 0x4 0x5 0x6 0x7",
        "202 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8 0x9",
        "202 1 2 3 4 5 6 7 8",
        "202 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0xZZ",
        "-1 0x7ffd5a3c1e08",
        "-1 0x1 0x2 0x3",
        "-2 0x1 0x2",
        "0x202 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8",
    ] {
        assert_eq!(parse_syscall(garbage), None, "{garbage:?}");
    }
}

#[test]
fn exec_start_parses_from_a_real_sched_file() {
    // The head of /proc/thread-self/sched on this machine (Linux 6.18).
    let sched = "cat (11464, #threads: 1)\n\
        -------------------------------------------------------------------\n\
        se.exec_start                                :       1775432.241182\n\
        se.vruntime                                  :           132.213113\n\
        se.sum_exec_runtime                          :             0.188303\n\
        nr_switches                                  :                    1\n";
    assert_eq!(parse_exec_start_ns(sched), Some(1_775_432_241_182));
    assert_eq!(parse_exec_start_ns("se.exec_start : 12.5\n"), Some(12_500_000));
    assert_eq!(parse_exec_start_ns("se.exec_start : 0.000001\n"), Some(1));
    // Zeroed when the task moved to another CPU: no age.
    assert_eq!(parse_exec_start_ns("se.exec_start : 0.000000\n"), None);
    assert_eq!(parse_exec_start_ns("se.vruntime : 12.5\n"), None);
    assert_eq!(parse_exec_start_ns("se.exec_start : 12\n"), None);
    assert_eq!(parse_exec_start_ns("se.exec_start : 12.1234567\n"), None);
    assert_eq!(parse_exec_start_ns("se.exec_start : x.5\n"), None);
}

#[test]
fn writable_mappings_parse_and_contain_addresses() {
    let maps = "55d0c2a00000-55d0c2a4b000 r-xp 00000000 fe:01 1234 /usr/bin/server\n\
        55d0c2a4b000-55d0c2a4c000 rw-p 0004b000 fe:01 1234 /usr/bin/server\n\
        7f8e19bfd000-7f8e19bfe000 ---p 00000000 00:00 0\n\
        7f8e19bfe000-7f8e1a3fe000 rw-p 00000000 00:00 0\n\
        7ffd5a3a2000-7ffd5a3c3000 rw-p 00000000 00:00 0                          [stack]\n";
    let mappings = parse_writable_mappings(maps);
    let bounds: Vec<_> = mappings.iter().map(|m| (m.start, m.end)).collect();
    assert_eq!(
        bounds,
        [
            (0x55d0_c2a4_b000, 0x55d0_c2a4_c000),
            (0x7f8e_19bf_e000, 0x7f8e_1a3f_e000),
            (0x7ffd_5a3a_2000, 0x7ffd_5a3c_3000)
        ]
    );
    let reader = ThreadReader {
        pid: 0,
        mappings,
        mappings_stale: false,
        missed_at: None,
        path: String::new(),
        buf: Vec::new(),
        kept_files: HashMap::new(),
        max_kept_threads: 200,
        task_dir: None,
        clock: None,
    };
    assert_eq!(reader.mapping_of(0x7f8e_1a3f_dc40).map(|m| m.end), Some(0x7f8e_1a3f_e000));
    assert_eq!(reader.mapping_of(0x7f8e_19bf_e000).map(|m| m.start), Some(0x7f8e_19bf_e000));
    assert!(reader.mapping_of(0x7f8e_1a3f_e000).is_none(), "end is exclusive");
    assert!(reader.mapping_of(0x7f8e_19bf_d800).is_none(), "guard page is not writable");
    assert!(reader.mapping_of(0x1000).is_none());
}

/// Threads of this test process parked on one condition variable until dropped.
struct Parked {
    gate: Arc<(Mutex<bool>, Condvar)>,
    handles: Vec<JoinHandle<()>>,
    /// (tid, instant just before the thread's first wait) per thread.
    started: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl Parked {
    fn spawn(count: usize, name: &str, stack_size: usize) -> Self {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let started = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let handles = (0..count)
            .map(|i| {
                let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
                thread::Builder::new()
                    .name(name.to_owned())
                    .stack_size(stack_size)
                    .spawn(move || {
                        let (lock, condvar) = &*gate;
                        let mut released = lock.lock().unwrap();
                        started.lock().unwrap().push((gettid(), Instant::now()));
                        while !*released {
                            released = condvar.wait(released).unwrap();
                        }
                    })
                    .unwrap_or_else(|e| panic!("spawn parked thread {i}: {e}"))
            })
            .collect();
        let parked = Self { gate, handles, started };
        let deadline = Instant::now() + Duration::from_secs(30);
        while parked.started.lock().unwrap().len() < count {
            assert!(Instant::now() < deadline, "parked threads did not start");
            thread::sleep(Duration::from_millis(5));
        }
        parked
    }

    fn tids(&self) -> Vec<(u32, Instant)> {
        self.started.lock().unwrap().clone()
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let (lock, condvar) = &*self.gate;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        condvar.notify_all();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

fn gettid() -> u32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).expect("tids are positive")
}

fn this_pid() -> u32 {
    std::process::id()
}

/// Samples `tid` until it is seen blocked (it may still be on its way into the wait).
fn sample_until_blocked(reader: &mut ThreadReader, tid: u32) -> ThreadSample {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match reader.sample(tid) {
            Ok(Some(sample)) => return sample,
            Ok(None) | Err(SampleError::Woke) => {}
            Err(e) => panic!("sample tid {tid}: {e:?}"),
        }
        assert!(Instant::now() < deadline, "tid {tid} never seen blocked");
        thread::sleep(Duration::from_millis(1));
    }
}

/// The executable mappings of this test binary.
fn own_code_ranges() -> Vec<(u64, u64)> {
    let exe = std::env::current_exe().expect("current_exe");
    let maps = fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter(|line| line.ends_with(&*exe.to_string_lossy()))
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            fields.next()?.contains('x').then_some(())?;
            Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

#[test]
fn thread_blocked_on_a_condvar_is_sampled_with_its_stack() {
    let parked = Parked::spawn(1, "tracer-parked", 2 << 20);
    let (tid, _) = parked.tids()[0];
    let mut reader = ThreadReader::new(this_pid()).expect("reader for own pid");
    assert!(reader.thread_ids().expect("thread ids").contains(&tid));

    let sample = sample_until_blocked(&mut reader, tid);
    assert_eq!(sample.tid, tid);
    assert_eq!(sample.comm, "tracer-parked");
    assert_eq!(sample.syscall.nr, SYS_FUTEX);
    assert!(!sample.stack.is_empty());
    assert!(sample.stack.len() <= MAX_STACK_READ);
    let mapping = reader.mapping_of(sample.syscall.sp).expect("sp lies in a writable mapping");
    assert!(sample.syscall.sp + sample.stack.len() as u64 <= mapping.end);

    // The parked closure and Condvar::wait are in this binary: their return addresses are on
    // the stack copy (which a short copy from the wrong place would miss).
    let code = own_code_ranges();
    assert!(!code.is_empty(), "no executable mapping of the test binary");
    let returns_into_binary = sample
        .stack
        .chunks_exact(8)
        .map(|word| u64::from_ne_bytes(word.try_into().expect("8 bytes")))
        .filter(|word| code.iter().any(|&(start, end)| (start..end).contains(word)))
        .count();
    assert!(returns_into_binary > 0, "no return address into the test binary on the stack");
}

#[test]
fn age_of_a_condvar_wait_is_a_tight_lower_bound() {
    let parked = Parked::spawn(1, "tracer-aged", 2 << 20);
    let (tid, blocked_at) = parked.tids()[0];
    let left_out = LeftOutTime::now();
    thread::sleep(Duration::from_millis(1500));
    let mut reader = ThreadReader::new(this_pid()).expect("reader for own pid");
    let before = blocked_at.elapsed();
    let sample = sample_until_blocked(&mut reader, tid);
    let after = blocked_at.elapsed();
    let age = Duration::from_nanos(sample.blocked_for_at_least_ns.expect("an age"));
    println!("condvar wait: age {age:?}, true age in [{before:?}, {after:?}]");
    assert!(age <= after + AGE_SLACK_ABOVE, "age {age:?} above the true age {after:?}");
    let left_out = left_out.since();
    assert!(
        age + AGE_TOLERANCE + left_out >= before,
        "age {age:?} far below the true age {before:?} ({left_out:?} of interrupts and steal)"
    );
}

#[test]
fn sched_clock_reads_each_cpu_and_the_slowest_is_at_most_this_one() {
    let start = Instant::now();
    let clock = SchedClock::calibrate().expect("calibrate the scheduler clock");
    let took = start.elapsed();
    // Stay on one CPU while its clock is read and named: a thread moved between the two
    // compares one CPU's clock with another's (seen here: 1.7 ms apart).
    // SAFETY: sched_getcpu takes no arguments.
    let this_cpu = usize::try_from(unsafe { libc::sched_getcpu() }).expect("a CPU number");
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: zeroed cpu_set_t values are empty sets; sched_getaffinity fills `allowed` and
    // sched_setaffinity reads `one`, for the calling thread (pid 0); CPU_SET adds a CPU.
    let (pinned, allowed) = unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size, &mut allowed);
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(this_cpu, &mut one);
        (libc::sched_setaffinity(0, size, &one) == 0, allowed)
    };
    assert!(pinned, "cannot pin the test thread to CPU {this_cpu}");
    let slowest = clock.now_ns(None).expect("calibrated now");
    let here = scheduler_now_ns().expect("own now");
    // SAFETY: as above: the thread's own affinity, as it was.
    unsafe { libc::sched_setaffinity(0, size, &allowed) };
    let this_cpu_clock = clock.now_ns(Some(this_cpu)).expect("this CPU's clock");
    println!(
        "calibrated on every CPU in {took:?}; this CPU {} us ahead of the slowest, \
         its extrapolated clock {} us off its own reading",
        (i128::from(here) - i128::from(slowest)) / 1000,
        (i128::from(here) - i128::from(this_cpu_clock)) / 1000
    );
    assert!(slowest <= this_cpu_clock, "the slowest clock {slowest} is ahead of CPU {this_cpu}'s");
    // This CPU's extrapolated clock tracks its own reading (1 ms: rounding, a tick's lag).
    assert!(
        this_cpu_clock.abs_diff(here) < 1_000_000,
        "CPU {this_cpu}: extrapolated {this_cpu_clock} vs read {here}"
    );
}

#[test]
fn last_cpu_parses_after_a_comm_with_spaces() {
    let mut stat = String::from("42 (a (b) c) S");
    for field in 4..=52 {
        stat.push_str(&format!(" {}", if field == 39 { 1 } else { 0 }));
    }
    assert_eq!(parse_last_cpu(&stat), Some(1));
    assert_eq!(parse_last_cpu("42 (x) S 1 2"), None);
}

/// Kills the child on drop, so that a failed assertion leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn age_of_another_process_sleeping_is_a_tight_lower_bound() {
    let spawned_at = Instant::now();
    let child = ChildGuard(Command::new("sleep").arg("30").spawn().expect("spawn sleep"));
    let pid = child.0.id();
    // The reader reads the mappings it finds stacks in when made: only once the child runs
    // `sleep` (its name changes after its new address space is in place) are they its.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm").trim_end() != "sleep" {
        assert!(Instant::now() < deadline, "pid {pid} never ran sleep");
        thread::sleep(Duration::from_millis(1));
    }
    let mut reader = ThreadReader::new(pid).expect("reader for the child");
    // Measure from the moment it is seen asleep, not from the spawn: exec and the loader
    // take an unknown time on a loaded machine.
    sample_until_blocked(&mut reader, pid);
    let seen_blocked_at = Instant::now();
    let left_out = LeftOutTime::now();
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(reader.thread_ids().expect("thread ids"), [pid]);
    let blocked_at_least = seen_blocked_at.elapsed();
    let sample = sample_until_blocked(&mut reader, pid);
    let since_spawn = spawned_at.elapsed();
    assert_eq!(sample.comm, "sleep");
    assert_eq!(sample.syscall.nr, SYS_CLOCK_NANOSLEEP);
    assert!(!sample.stack.is_empty());
    let age = Duration::from_nanos(sample.blocked_for_at_least_ns.expect("an age"));
    println!(
        "sleep 30: age {age:?}, asleep at least {blocked_at_least:?}, spawned {since_spawn:?} ago"
    );
    assert!(
        age <= since_spawn + AGE_SLACK_ABOVE,
        "age {age:?} above the time since spawn {since_spawn:?}"
    );
    let left_out = left_out.since();
    assert!(
        age + AGE_TOLERANCE + left_out >= blocked_at_least,
        "age {age:?} far below the time it was seen asleep {blocked_at_least:?} ({left_out:?} \
         of interrupts and steal)"
    );
}

#[test]
fn exited_thread_is_gone() {
    let handle = thread::spawn(gettid);
    let tid = handle.join().expect("join");
    let mut reader = ThreadReader::new(this_pid()).expect("reader for own pid");
    // `join` returns once the thread's tid word is cleared, which the kernel does before
    // it unlists the task: wait for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.thread_ids().expect("thread ids").contains(&tid) {
        assert!(Instant::now() < deadline, "tid {tid} still listed 10 s after its join");
        thread::sleep(Duration::from_millis(1));
    }
    match reader.sample(tid) {
        Err(SampleError::Exited) => {}
        other => panic!("sample of an exited thread: {other:?}"),
    }
}

#[test]
fn a_kept_listing_and_kept_files_follow_threads_that_come_and_go() {
    let mut reader = ThreadReader::new(this_pid()).expect("reader for own pid");
    let before = reader.thread_ids().expect("thread ids");
    let parked = Parked::spawn(1, "kept", 64 << 10);
    let tid = parked.tids()[0].0;
    let during = reader.thread_ids().expect("thread ids");
    assert!(!before.contains(&tid) && during.contains(&tid), "{before:?} then {during:?}");
    // Peeked twice: the second read goes through the files kept open by the first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.peek(tid).expect("peek").is_none() {
        assert!(Instant::now() < deadline, "tid {tid} never seen blocked");
        thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..2 {
        let state = reader.peek(tid).expect("peek").expect("still blocked");
        assert_eq!(state.syscall.nr, libc::SYS_futex);
    }
    drop(parked);
    // A joined thread leaves the listing a moment after its join returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = reader.thread_ids().expect("thread ids");
        if !after.contains(&tid) {
            break after;
        }
        assert!(Instant::now() < deadline, "tid {tid} still listed: {after:?}");
        thread::sleep(Duration::from_millis(1));
    };
    reader.forget_threads_except(&after);
    assert!(matches!(reader.peek(tid), Err(SampleError::Exited)));
}

#[test]
fn directory_records_give_their_names() {
    let mut records = Vec::new();
    for name in ["1234", "5", "."] {
        // inode, offset, record length, type, name, NUL, padding to 8 bytes.
        let reclen = (19 + name.len() + 1).next_multiple_of(8);
        records.extend_from_slice(&7u64.to_ne_bytes());
        records.extend_from_slice(&0i64.to_ne_bytes());
        records.extend_from_slice(&(reclen as u16).to_ne_bytes());
        records.push(libc::DT_DIR);
        records.extend_from_slice(name.as_bytes());
        records.resize(records.len() + reclen - 19 - name.len(), 0);
    }
    let names: Vec<&[u8]> = dirent_names(&records).collect();
    assert_eq!(names, [&b"1234"[..], b"5", b"."]);
    // A record cut short ends the walk instead of reading past the buffer.
    assert_eq!(dirent_names(&records[..30]).count(), 1);
}

#[test]
fn spinning_thread_gives_no_stack() {
    let spinner_tid = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (spinner_tid, stop) = (Arc::clone(&spinner_tid), Arc::clone(&stop));
        thread::spawn(move || {
            spinner_tid.store(gettid(), Ordering::Release);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n = black_box(n.wrapping_add(1));
            }
        })
    };
    let tid = loop {
        match spinner_tid.load(Ordering::Acquire) {
            0 => thread::yield_now(),
            tid => break tid,
        }
    };
    let mut reader = ThreadReader::new(this_pid()).expect("reader for own pid");
    let (mut off_cpu, mut rounds) = (0, 0);
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        match reader.sample(tid) {
            // Running, or preempted in user code ("-1 sp pc"): no syscall, no stack.
            Ok(None) => {}
            Err(SampleError::Woke) => off_cpu += 1,
            other => panic!("sample of a spinning thread: {other:?}"),
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("join spinner");
    println!("spinner: {rounds} samples, {off_cpu} woke");
}

fn sample_pile_up(count: usize) {
    let parked = Parked::spawn(count, "tracer-pile", PILE_UP_STACK);
    let mut reader = ThreadReader::new(this_pid()).expect("reader for own pid");
    let tids: Vec<u32> = parked.tids().into_iter().map(|(tid, _)| tid).collect();
    // Let every thread reach its wait before timing a pass.
    for &tid in &tids {
        sample_until_blocked(&mut reader, tid);
    }

    let start = Instant::now();
    let listed = reader.thread_ids().expect("thread ids");
    let mut samples = Vec::with_capacity(listed.len());
    let mut stack_bytes = 0;
    for tid in listed {
        if let Ok(Some(sample)) = reader.sample(tid) {
            stack_bytes += sample.stack.len();
            samples.push((sample.tid, sample.syscall.nr));
        }
    }
    let elapsed = start.elapsed();
    println!(
        "sampled {} blocked threads ({count} parked) in {elapsed:?}, {} KiB of stack copied",
        samples.len(),
        stack_bytes >> 10
    );
    samples.sort_unstable();
    for tid in tids {
        let found = samples.binary_search_by_key(&tid, |&(tid, _)| tid);
        let nr = found.map(|i| samples[i].1);
        assert_eq!(nr, Ok(SYS_FUTEX), "parked tid {tid}");
    }
}

#[test]
fn pile_up_of_two_thousand_threads_is_sampled() {
    sample_pile_up(2_000);
}

/// The goal of issue 3 (run with `--ignored --nocapture` to see the time).
#[test]
#[ignore = "spawns 10,000 threads"]
fn pile_up_of_ten_thousand_threads_is_sampled() {
    sample_pile_up(10_000);
}

#[test]
fn a_look_reads_as_the_syscall_file_would() {
    let blocked = TaskLook {
        tid: 7,
        tgid: 5,
        state: 1,
        syscall_nr: 202,
        args: [0x10, 0x189, 0, 0, 0, 0xffff_ffff],
        ip: 0x7f00_0000_1f3d,
        sp: 0x7ffd_0000_1e08,
        ..TaskLook::default()
    };
    assert_eq!(
        ThreadSyscall::of_look(&blocked),
        ThreadSyscall::Blocked(SyscallState {
            nr: 202,
            args: [0x10, 0x189, 0, 0, 0, 0xffff_ffff],
            sp: 0x7ffd_0000_1e08,
            pc: 0x7f00_0000_1f3d,
        })
    );
    // Runnable, or still on its CPU on the way to sleep: /proc says "running".
    assert_eq!(ThreadSyscall::of_look(&TaskLook { state: 0, ..blocked }), ThreadSyscall::Running);
    assert_eq!(ThreadSyscall::of_look(&TaskLook { on_cpu: 1, ..blocked }), ThreadSyscall::Running);
    // Asleep outside any syscall (a page fault): "-1 sp pc".
    assert_eq!(
        ThreadSyscall::of_look(&TaskLook { syscall_nr: -1, ..blocked }),
        ThreadSyscall::NotInSyscall { sp: 0x7ffd_0000_1e08, pc: 0x7f00_0000_1f3d }
    );
}

/// A reader of this process that has seen each of `parked`'s threads blocked, their ids,
/// and the probes for a pass of the task iterator over this process.
fn read_once_blocked(parked: &Parked) -> (ThreadReader, Vec<u32>, crate::probes::Probes) {
    let mut reader = ThreadReader::new(this_pid()).expect("reader for own pid");
    let tids: Vec<u32> = parked.tids().into_iter().map(|(tid, _)| tid).collect();
    for &tid in &tids {
        sample_until_blocked(&mut reader, tid);
    }
    let btf = crate::pipeline::target::btf_path().expect("this machine has BTF");
    let probes = crate::probes::Probes::open_for_reading(this_pid(), &btf).expect("probes");
    (reader, tids, probes)
}

/// The task iterator's looks at parked threads of this process say what their /proc
/// files say, and their switch counts hold still while they stay parked. Loads the probe
/// object into the kernel (root).
#[test]
fn the_task_iterators_looks_agree_with_proc() {
    let parked = Parked::spawn(4, "tracer-look", PILE_UP_STACK);
    let (_reader, tids, mut probes) = read_once_blocked(&parked);
    let first = probes.task_looks().expect("a pass of the iterator");
    thread::sleep(Duration::from_millis(50));
    let second = probes.task_looks().expect("a second pass");
    assert!(first.iter().all(|look| look.tgid == this_pid()), "only this process's threads");
    for tid in tids {
        let look = first.iter().find(|look| look.tid == tid).expect("a look at each parked thread");
        let proc =
            parse_syscall(&fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap());
        assert_eq!(Some(ThreadSyscall::of_look(look)), proc, "tid {tid}");
        assert!(
            matches!(ThreadSyscall::of_look(look), ThreadSyscall::Blocked(s) if s.nr == SYS_FUTEX)
        );
        assert_eq!(&look.comm[..12], b"tracer-look\0", "tid {tid}");
        assert!(look.switches > 0, "{look:?}");
        let schedstat = fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
        assert_eq!(Some(look.arrivals), parse_run_count(&schedstat), "tid {tid}");
        let again = second.iter().find(|look| look.tid == tid).expect("seen again");
        assert_eq!(again, look, "a parked thread's look holds still");
    }
}

/// A stack copied on the word of a look stands only while the thread has not run since
/// the look: a thread woken and back at the very same place (a condition variable's
/// spurious wakeup: same call, sp and pc) is refused, and a fresh look's copy stands.
/// Loads the probe object into the kernel (root).
#[test]
fn a_look_is_stale_once_its_thread_ran_again() {
    let parked = Parked::spawn(2, "tracer-stale", PILE_UP_STACK);
    let (mut reader, tids, mut probes) = read_once_blocked(&parked);
    let look_of = |looks: &[TaskLook], tid| *looks.iter().find(|look| look.tid == tid).unwrap();
    let before = probes.task_looks().expect("a pass of the iterator");
    // Wake them without releasing them: each goes back to the same wait.
    {
        let (lock, condvar) = &*parked.gate;
        let _held = lock.lock().unwrap();
        condvar.notify_all();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = probes.task_looks().expect("a pass of the iterator");
        let back = |&tid: &u32| {
            let (old, new) = (look_of(&before, tid), look_of(&after, tid));
            // Back at the same sp and pc (the futex word's value moved on).
            new.arrivals > old.arrivals
                && matches!(ThreadSyscall::of_look(&new), ThreadSyscall::Blocked(call)
                    if call.nr == SYS_FUTEX && (call.sp, call.pc) == (old.sp, old.ip))
        };
        if tids.iter().all(back) {
            break after;
        }
        assert!(Instant::now() < deadline, "the woken threads did not wait again");
        thread::sleep(Duration::from_millis(5));
    };
    for &tid in &tids {
        let stale = look_of(&before, tid);
        let ThreadSyscall::Blocked(call) = ThreadSyscall::of_look(&stale) else {
            panic!("tid {tid} was not blocked: {stale:?}");
        };
        assert!(
            matches!(reader.sample_look(&stale, call), Err(SampleError::Woke)),
            "tid {tid}: a copy after the thread ran is refused"
        );
        let fresh = look_of(&after, tid);
        let ThreadSyscall::Blocked(call) = ThreadSyscall::of_look(&fresh) else { unreachable!() };
        let sample = reader.sample_look(&fresh, call).expect("a fresh look's copy stands");
        assert!(!sample.stack.is_empty() && sample.syscall == call, "tid {tid}");
        // A kernel whose looks count no arrivals: /proc says the same.
        let uncounted = TaskLook { arrivals: TaskLook::ARRIVALS_UNKNOWN, ..fresh };
        assert!(reader.sample_look(&uncounted, call).is_ok(), "tid {tid}");
        let mut moved_on = call;
        moved_on.args[2] ^= 1;
        let uncounted_stale = TaskLook { args: moved_on.args, ..uncounted };
        assert!(
            matches!(reader.sample_look(&uncounted_stale, moved_on), Err(SampleError::Woke)),
            "tid {tid}: without arrivals, a call that is not the look's is refused"
        );
    }
}

#[test]
fn a_call_on_a_descriptor_names_it() {
    let call =
        |nr: i64, first: u64| SyscallState { nr, args: [first, 0, 0, 0, 0, 0], sp: 0, pc: 0 };
    assert_eq!(syscall_descriptor(&call(1, 7)), Some(7)); // write
    assert_eq!(syscall_descriptor(&call(74, 3)), Some(3)); // fsync
    assert_eq!(syscall_descriptor(&call(202, 0x7f00_0000)), None); // futex: an address
    assert_eq!(syscall_descriptor(&call(999, 7)), None);
    assert_eq!(syscall_descriptor(&call(1, u64::MAX)), None); // -1
    assert_eq!(syscall_name(74), "fsync");
    assert_eq!(syscall_name(999), "syscall 999");
}
