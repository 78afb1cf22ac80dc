//! Threads blocked right now, read from /proc without stopping the process (no ptrace stop, no
//! signal): /proc/PID/task/TID/syscall gives the syscall, its arguments and the user sp and pc,
//! process_vm_readv copies the user stack, /proc/PID/task/TID/sched dates the block.

pub mod blocked_now;
pub mod kernel_passes;
pub mod sampler;
pub mod waits_before;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::time::{Duration, Instant};

use tracer_common::TaskLook;

/// Most stack bytes copied per thread. A function can keep a 64 KiB buffer in its frame, which
/// puts its callers beyond a short copy; past 512 KiB it is more likely we are reading a heap
/// mapping that happens to hold sp (a green-thread stack) than frames the unwinder needs.
pub const MAX_STACK_READ: usize = 512 << 10;

/// The per-CPU scheduler clocks are recalibrated against CLOCK_MONOTONIC this often, so that
/// the two clocks' drift (steal time, NTP slew) between calibrations stays far below a
/// millisecond.
const CLOCK_RECALIBRATE: Duration = Duration::from_millis(100);

/// A thread's sp outside every known mapping re-reads /proc/PID/maps (new threads have new
/// stacks), but not more often than this: the maps of a process with 10,000 threads are 1.5 MB,
/// and threads whose sp is in no mapping at all must not make a snapshot quadratic.
const MAPS_REFRESH_MIN: Duration = Duration::from_millis(10);

/// Room for one read of any per-thread /proc file we parse (sched is about 2 KiB; a deep kernel
/// stack about 4 KiB); the buffer grows if a file is bigger.
const READ_BUF: usize = 8 << 10;

/// A thread blocked in a syscall, as /proc/PID/task/TID/syscall shows it:
/// `nr arg0 .. arg5 sp pc` (decimal nr, hex arguments, sp and pc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallState {
    pub nr: i64,
    pub args: [u64; 6],
    /// User stack pointer at syscall entry.
    pub sp: u64,
    /// User instruction pointer: the instruction after the `syscall`.
    pub pc: u64,
}

/// What /proc/PID/task/TID/syscall says about a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadSyscall {
    /// `running`: on a CPU right now, so the kernel cannot tell.
    Running,
    /// `-1 sp pc`: off the CPU but not in a syscall (preempted in user code, or stopped).
    NotInSyscall { sp: u64, pc: u64 },
    /// In a syscall and off the CPU: blocked (or preempted inside the kernel).
    Blocked(SyscallState),
}

impl ThreadSyscall {
    /// What /proc's syscall file would say of the thread a task iterator's look saw:
    /// running while its state is 0 or it is still on a CPU (/proc waits for it to leave
    /// the CPU; a sampled read does not), otherwise the syscall it sleeps in.
    pub fn of_look(look: &TaskLook) -> Self {
        if look.state == 0 || look.on_cpu != 0 {
            ThreadSyscall::Running
        } else if look.syscall_nr < 0 {
            ThreadSyscall::NotInSyscall { sp: look.sp, pc: look.ip }
        } else {
            ThreadSyscall::Blocked(SyscallState {
                nr: look.syscall_nr,
                args: look.args,
                sp: look.sp,
                pc: look.ip,
            })
        }
    }
}

/// What /proc says of thread `tid` of `pid` now, if it can be read.
pub fn read_syscall(pid: u32, tid: u32) -> Option<ThreadSyscall> {
    parse_syscall(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)
}

/// The syscall each blocked thread of `pid` is in now, or None when its threads cannot be
/// listed or one of them cannot be read (what they all wait on cannot be told then; a
/// thread gone since the listing waits on nothing).
pub fn blocked_calls(pid: u32) -> Option<Vec<(u32, SyscallState)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut blocked = Vec::new();
    for tid in tasks.flatten().filter_map(|task| task.file_name().to_str()?.parse().ok()) {
        match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) {
            Ok(text) => {
                if let Some(ThreadSyscall::Blocked(call)) = parse_syscall(&text) {
                    blocked.push((tid, call));
                }
            }
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    || err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(_) => return None,
        }
    }
    Some(blocked)
}

/// The name of x86_64 syscall `nr` (`syscall 999` for one not among the blocking calls a
/// thread is usually found in).
pub fn syscall_name(nr: i64) -> String {
    known_syscall_name(nr).map_or_else(|| format!("syscall {nr}"), str::to_owned)
}

/// The name of x86_64 syscall `nr`, for the blocking calls a thread is usually found in.
pub fn known_syscall_name(nr: i64) -> Option<&'static str> {
    Some(match nr {
        0 => "read",
        1 => "write",
        7 => "poll",
        17 => "pread64",
        18 => "pwrite64",
        19 => "readv",
        20 => "writev",
        23 => "select",
        34 => "pause",
        35 => "nanosleep",
        40 => "sendfile",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        61 => "wait4",
        73 => "flock",
        74 => "fsync",
        75 => "fdatasync",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        247 => "waitid",
        257 => "openat",
        270 => "pselect6",
        271 => "ppoll",
        275 => "splice",
        281 => "epoll_pwait",
        288 => "accept4",
        295 => "preadv",
        296 => "pwritev",
        441 => "epoll_pwait2",
        _ => return None,
    })
}

/// The descriptor a blocking call waits on, for the calls whose first argument is one.
pub fn syscall_descriptor(call: &SyscallState) -> Option<i32> {
    let on_descriptor = matches!(
        known_syscall_name(call.nr)?,
        "read"
            | "write"
            | "pread64"
            | "pwrite64"
            | "readv"
            | "writev"
            | "preadv"
            | "pwritev"
            | "sendfile"
            | "splice"
            | "connect"
            | "accept"
            | "accept4"
            | "sendto"
            | "recvfrom"
            | "sendmsg"
            | "recvmsg"
            | "flock"
            | "fsync"
            | "fdatasync"
    );
    i32::try_from(call.args[0]).ok().filter(|fd| on_descriptor && *fd >= 0)
}

/// Parses the text of /proc/PID/task/TID/syscall
/// (<https://elixir.bootlin.com/linux/v6.18/source/fs/proc/base.c> `proc_pid_syscall`).
pub fn parse_syscall(text: &str) -> Option<ThreadSyscall> {
    let text = text.trim();
    if text == "running" {
        return Some(ThreadSyscall::Running);
    }
    let mut fields = text.split_ascii_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let mut hex = || parse_hex(fields.next()?);
    let state = if nr == -1 {
        let (sp, pc) = (hex()?, hex()?);
        ThreadSyscall::NotInSyscall { sp, pc }
    } else if nr >= 0 {
        let args = [hex()?, hex()?, hex()?, hex()?, hex()?, hex()?];
        let (sp, pc) = (hex()?, hex()?);
        ThreadSyscall::Blocked(SyscallState { nr, args, sp, pc })
    } else {
        return None;
    };
    fields.next().is_none().then_some(state)
}

fn parse_hex(field: &str) -> Option<u64> {
    u64::from_str_radix(field.strip_prefix("0x")?, 16).ok()
}

/// `se.exec_start` of a /proc/.../sched file, in nanoseconds. The kernel prints nanoseconds split
/// as milliseconds with six decimals (`SPLIT_NS`), e.g. `se.exec_start : 123456.789012`.
/// None for 0, which tells nothing: the scheduler zeroes it when it moves a task to another
/// CPU (`migrate_task_rq_fair`), and an age taken from it was the machine's uptime (a
/// reader of a pipe, blocked for 4 s, showed `≥576m20s`).
pub fn parse_exec_start_ns(sched: &str) -> Option<u64> {
    let line = sched.lines().find(|line| line.starts_with("se.exec_start"))?;
    let (_, value) = line.split_once(':')?;
    let (ms, frac) = value.trim().split_once('.')?;
    if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // "5" after the point is 500000 ns, whatever the printed width.
    let frac_ns: u64 = frac.parse::<u64>().ok()? * 10u64.pow(6 - frac.len() as u32);
    ms.parse::<u64>().ok()?.checked_mul(1_000_000)?.checked_add(frac_ns).filter(|&ns| ns > 0)
}

/// The scheduler clock "now" on the calling thread's CPU: its own `se.exec_start`.
///
/// A blocked task's `se.exec_start` is the `rq_clock_task` of the moment it last stopped running
/// (`update_curr` runs on every dequeue), so now minus it is how long it has been off the CPU.
/// A running task's `se.exec_start` only advances at the tick (4 ms at HZ=250) or a reschedule,
/// so we yield first: `schedule()` runs `update_curr` on us even when nothing else is runnable.
/// A stale reading would only make ages smaller, so the age stays a lower bound.
///
/// `rq_clock_task` is per CPU: it leaves out steal time (CONFIG_PARAVIRT_TIME_ACCOUNTING) and,
/// where configured, IRQ time, so two CPUs' clocks differ. Measured on this 2-CPU VM (kvm, a
/// little steal): CPU 1's ran 13.5 ms behind CPU 0's, and 4.6 ms five minutes later; an age
/// taken against the wrong CPU's clock came out 11 ms longer than the true age. `ThreadReader`
/// therefore compares with the slowest CPU's clock (see `SchedClock`), not with this one.
pub fn scheduler_now_ns() -> Option<u64> {
    // SAFETY: sched_yield takes no arguments and touches no memory of ours.
    unsafe { libc::sched_yield() };
    let sched = fs::read_to_string("/proc/thread-self/sched").ok()?;
    parse_exec_start_ns(&sched)
}

/// Every CPU's scheduler clock, extrapolated with CLOCK_MONOTONIC: a blocked thread's
/// `se.exec_start` came from the clock of the CPU it last ran on (the `processor` field of
/// its stat file), so its age is that clock's now minus it. The CPUs' clocks drift apart by
/// their steal time: 5-14 ms here on a quiet VM, hundreds of milliseconds after minutes of
/// load, so no single clock serves every thread. When the thread's CPU is unknown (or its
/// clock could not be read: a tracer confined by taskset or a cpuset), the slowest clock is
/// used, which keeps the age a lower bound. Extrapolating spares reading our own sched file
/// once per sampled thread.
#[derive(Clone, Debug)]
struct SchedClock {
    /// When it was calibrated; `now_ns` is relative to it.
    base: Instant,
    /// Each readable CPU's scheduler clock at `base`, in nanoseconds (it may be below zero
    /// when CLOCK_MONOTONIC is ahead), by CPU number.
    at_base_ns: Vec<Option<i128>>,
    /// The slowest of them.
    slowest_at_base_ns: i128,
}

impl SchedClock {
    /// Reads the scheduler clock on every CPU this thread may run on, moving the thread there
    /// for the read and back after (a few context switches per CPU). Falls back to the current
    /// CPU's clock when the affinity cannot be changed.
    fn calibrate() -> Option<Self> {
        const CALIBRATION_TRIES: usize = 3;
        let base = Instant::now();
        let mut at_base_ns: Vec<Option<i128>> = Vec::new();
        let read_here = |at_base_ns: &mut Vec<Option<i128>>, cpu: usize| {
            // Taken after the read: the clock value is older than this instant, so the offset
            // errs low (and ages with it), by as long as the thread was held up in between:
            // on a busy VM's vCPU, tens of milliseconds now and then. The highest of a few
            // tries is the one held up least.
            let tries = (0..CALIBRATION_TRIES).filter_map(|_| {
                let clock = scheduler_now_ns()?;
                Some(i128::from(clock) - base.elapsed().as_nanos() as i128)
            });
            let Some(clock_at_base) = tries.max() else {
                return;
            };
            if at_base_ns.len() <= cpu {
                at_base_ns.resize(cpu + 1, None);
            }
            at_base_ns[cpu] = Some(clock_at_base);
        };
        // SAFETY: cpu_set_t is plain bits; all zeroes is the empty set.
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let set_size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `allowed` is a cpu_set_t of `set_size` bytes that the kernel fills.
        let got = unsafe { libc::sched_getaffinity(0, set_size, &mut allowed) };
        if got == 0 {
            for cpu in 0..libc::CPU_SETSIZE as usize {
                // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
                if !unsafe { libc::CPU_ISSET(cpu, &allowed) } {
                    continue;
                }
                // SAFETY: as above; all zeroes is the empty set.
                let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
                // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
                unsafe { libc::CPU_SET(cpu, &mut one) };
                // SAFETY: `one` is a valid cpu_set_t of `set_size` bytes; the call moves this
                // thread onto `cpu` before it returns.
                if unsafe { libc::sched_setaffinity(0, set_size, &one) } == 0 {
                    read_here(&mut at_base_ns, cpu);
                }
            }
            // SAFETY: `allowed` is the mask read above, a valid cpu_set_t of `set_size` bytes.
            unsafe { libc::sched_setaffinity(0, set_size, &allowed) };
        }
        let slowest_at_base_ns = match at_base_ns.iter().flatten().min() {
            Some(&slowest) => slowest,
            None => {
                // Affinity unchangeable: this CPU's clock is all there is; its number is
                // unknown, so it only serves as the slowest.
                let mut here = Vec::new();
                read_here(&mut here, 0);
                here.first().copied().flatten()?
            }
        };
        Some(Self { base, at_base_ns, slowest_at_base_ns })
    }

    /// The scheduler clock of `cpu` now, or the slowest clock's when `cpu` is unknown.
    fn now_ns(&self, cpu: Option<usize>) -> Option<u64> {
        let at_base = cpu
            .and_then(|cpu| self.at_base_ns.get(cpu).copied().flatten())
            .unwrap_or(self.slowest_at_base_ns);
        u64::try_from(at_base + self.base.elapsed().as_nanos() as i128).ok()
    }

    fn is_fresh(&self) -> bool {
        self.base.elapsed() < CLOCK_RECALIBRATE
    }
}

/// One blocked thread, read consistently: its syscall was the same before and after the copy.
#[derive(Clone, Debug)]
pub struct ThreadSample {
    pub tid: u32,
    pub comm: String,
    pub syscall: SyscallState,
    /// User stack bytes from `syscall.sp` upwards, to the end of the mapping holding sp
    /// (at most `MAX_STACK_READ`).
    pub stack: Vec<u8>,
    /// How long it has been off the CPU, from the scheduler's accounting: a lower bound on how
    /// long it has been blocked (show it as "≥"). None when the sched file is unavailable.
    pub blocked_for_at_least_ns: Option<u64>,
    /// Its `se.exec_start`: when it last stopped running (None without an age).
    pub exec_start_ns: Option<u64>,
    /// How many times it has been run on a CPU (see [`BlockedState::runs`]).
    pub runs: Option<u64>,
}

/// What a cheap look at a blocked thread tells (see [`ThreadReader::peek`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedState {
    pub syscall: SyscallState,
    /// How many times it has run: a task iterator look's switch count, or from /proc
    /// `pcount`, the third field of /proc/PID/task/TID/schedstat (a quarter of the cost of
    /// the sched file, 3 µs against 12 here). A sampler keeps to one of the two. It does
    /// not move while the thread stays blocked, so a later read that finds it (and the
    /// call) unchanged sees the same wait. None when it is unavailable.
    pub runs: Option<u64>,
}

/// The run count (`pcount`) of a /proc/.../schedstat file: `run_ns wait_ns pcount`.
pub fn parse_run_count(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().nth(2)?.parse().ok()
}

/// Why a thread could not be sampled.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The thread exited before it was fully read.
    #[error("thread exited while being read")]
    Exited,
    /// The thread woke (its syscall, sp or pc changed) while being read.
    #[error("thread woke while being read")]
    Woke,
    /// The thread could not be read (permission, exec in progress, stack in no mapping).
    #[error("thread could not be read")]
    Unreadable(#[source] io::Error),
}

impl From<io::Error> for SampleError {
    fn from(error: io::Error) -> Self {
        if is_gone(&error) { Self::Exited } else { Self::Unreadable(error) }
    }
}

/// ENOENT: the /proc entry is gone; ESRCH: the task is gone (process_vm_readv, or a /proc read
/// racing with exit).
fn is_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ESRCH)
}

/// A writable mapping of the target (any of them can be a thread's stack).
#[derive(Clone, Copy, Debug)]
struct Mapping {
    start: u64,
    end: u64,
}

/// Reads the blocked threads of one process, reusing its buffers across threads.
///
/// Dating the waits (every 100 ms of sampling) moves the calling thread onto each CPU it may
/// run on for a moment, then restores its affinity (see `SchedClock`).
pub struct ThreadReader {
    pid: u32,
    /// Writable mappings from /proc/PID/maps, sorted by start (the file's order).
    mappings: Vec<Mapping>,
    /// Set when a read suggests `mappings` no longer matches the process.
    mappings_stale: bool,
    /// When a miss last re-read `mappings`: misses re-read it at most once per
    /// `MAPS_REFRESH_MIN` (an sp in no mapping at all would re-read it at every read), but
    /// the first miss always does, however new the mappings are (a process just started
    /// moves its stack after we may have read them).
    missed_at: Option<Instant>,
    /// Reused path and file buffers: sampling allocates only what a sample returns.
    path: String,
    buf: Vec<u8>,
    /// The files of `KEPT_LEAVES` of each thread `peek` has looked at, kept open: a
    /// sampled recording peeks at every thread each period, and opening a file (a path
    /// walk through /proc and a permission check) cost more than reading it.
    kept_files: HashMap<u32, KeptFiles>,
    /// How many threads may keep their files open (`MAX_KEPT_THREADS`, less when many
    /// processes share the descriptor limit).
    max_kept_threads: usize,
    /// /proc/PID/task, open from the first listing on.
    task_dir: Option<File>,
    /// For ages; None until the first blocked thread, or when the sched file is unreadable.
    clock: Option<SchedClock>,
}

impl ThreadReader {
    /// For process `pid`: reads /proc/PID/maps once to know the writable mappings (refreshed
    /// when a thread's sp falls in none of them).
    pub fn new(pid: u32) -> Result<Self, io::Error> {
        let mut reader = Self {
            // A process whose main thread has exited is read through a thread that lives.
            pid: crate::pipeline::target::live_thread(pid),
            mappings: Vec::new(),
            mappings_stale: false,
            missed_at: None,
            path: String::with_capacity(64),
            buf: vec![0; READ_BUF],
            kept_files: HashMap::new(),
            max_kept_threads: DEFAULT_KEPT_THREADS,
            task_dir: None,
            clock: None,
        };
        reader.refresh_mappings()?;
        Ok(reader)
    }

    /// Keeps the files of at most `threads` threads open from now on (those beyond it
    /// are closed): several readers share the process's descriptor limit.
    pub fn keep_files_of_at_most(&mut self, threads: usize) {
        self.max_kept_threads = threads.min(MAX_KEPT_THREADS);
        if self.kept_files.len() > self.max_kept_threads {
            let extra: Vec<u32> =
                self.kept_files.keys().copied().skip(self.max_kept_threads).collect();
            for tid in extra {
                self.kept_files.remove(&tid);
            }
        }
    }

    /// Thread ids from /proc/PID/task, ascending. The directory stays open and is
    /// listed again from its start at each call (a sampled recording lists it every
    /// period, and opening it cost more than listing it).
    pub fn thread_ids(&mut self) -> io::Result<Vec<u32>> {
        use std::os::fd::AsRawFd as _;
        let dir = match &self.task_dir {
            Some(dir) => dir,
            None => self.task_dir.insert(File::open(format!("/proc/{}/task", self.pid))?),
        };
        let fd = dir.as_raw_fd();
        // SAFETY: lseek on a descriptor we own; a directory's offset 0 is its start.
        if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut tids = Vec::new();
        let mut entries = [0u8; 4096];
        loop {
            // SAFETY: the kernel writes at most `entries.len()` bytes of dirent64 records
            // into `entries`, which we own for the call.
            let len = unsafe {
                libc::syscall(libc::SYS_getdents64, fd, entries.as_mut_ptr(), entries.len())
            };
            let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
            if len == 0 {
                break;
            }
            tids.extend(
                dirent_names(&entries[..len])
                    .filter_map(|name| std::str::from_utf8(name).ok()?.parse::<u32>().ok()),
            );
        }
        tids.sort_unstable();
        Ok(tids)
    }

    /// Samples thread `tid`. Ok(None) when it is running or blocked outside a syscall.
    ///
    /// Otherwise reads its syscall file, comm, user stack (process_vm_readv from sp to the end of
    /// the mapping holding sp, at most `MAX_STACK_READ`) and sched file, then reads the syscall
    /// file again: Err(Woke) if it changed, or if the thread's run count (schedstat's
    /// `pcount`, read before the copy and after) did, so a stack copied while the thread ran
    /// is never returned, even when it came back to the very same syscall, sp and pc (a
    /// loop's sleep). ENOENT or ESRCH anywhere gives Err(Exited).
    pub fn sample(&mut self, tid: u32) -> Result<Option<ThreadSample>, SampleError> {
        self.sample_as(tid, true)
    }

    /// As `sample`, without the age (`blocked_for_at_least_ns` is None): a sampled
    /// recording knows a wait first seen after its first read began within the last period,
    /// and spares the scheduler-clock calibration, which visits every CPU, the traced
    /// service's among them.
    pub fn sample_without_age(&mut self, tid: u32) -> Result<Option<ThreadSample>, SampleError> {
        self.sample_as(tid, false)
    }

    fn sample_as(&mut self, tid: u32, age: bool) -> Result<Option<ThreadSample>, SampleError> {
        let syscall = match self.read_syscall(tid)? {
            ThreadSyscall::Blocked(state) => state,
            ThreadSyscall::Running | ThreadSyscall::NotInSyscall { .. } => return Ok(None),
        };
        let comm = self.read_task_file(tid, "comm")?.trim_end_matches('\n').to_owned();
        // Errors of the copy wait for the re-check: a thread that woke or exited says so first.
        let runs_before = self.read_run_count(tid)?;
        let stack = self.read_stack(syscall.sp);
        let exec_start = match age.then(|| self.read_task_file(tid, "sched")) {
            Some(Ok(sched)) => parse_exec_start_ns(&sched),
            Some(Err(error)) if is_gone(&error) => return Err(SampleError::Exited),
            _ => None,
        };
        let runs = self.read_run_count(tid)?;
        let last_cpu = match age.then(|| self.read_task_file(tid, "stat")) {
            Some(Ok(stat)) => parse_last_cpu(&stat),
            Some(Err(error)) if is_gone(&error) => return Err(SampleError::Exited),
            _ => None,
        };
        // A thread that ran during the copy and went back to the same wait (a loop's sleep
        // at the same sp and pc) leaves the same syscall file but a torn copy: its run count
        // tells.
        if self.read_syscall(tid)? != ThreadSyscall::Blocked(syscall) || runs != runs_before {
            return Err(SampleError::Woke);
        }
        let stack = stack?;
        let now = if age { self.now_ns(last_cpu) } else { None };
        Ok(Some(ThreadSample {
            tid,
            comm,
            syscall,
            stack,
            blocked_for_at_least_ns: exec_start
                .zip(now)
                .map(|(start, now)| now.saturating_sub(start)),
            exec_start_ns: exec_start,
            runs,
        }))
    }

    /// Samples the thread a task iterator's `look` found blocked in `syscall`, without
    /// an age: copies its stack, then reads its run count: Err(Woke) if the thread arrived
    /// on a CPU since the look (it may have left the call, or come back to the very same
    /// one after running, a loop's sleep, with its stack torn by the copy). Its name and
    /// run count are the look's. One /proc file a thread, kept open for its next new wait
    /// as `peek` keeps it; on a kernel whose looks count no arrivals, the run count brackets
    /// the copy alone, and the syscall file says whether the thread is still in that call
    /// (see `sample`).
    pub fn sample_look(
        &mut self,
        look: &TaskLook,
        syscall: SyscallState,
    ) -> Result<ThreadSample, SampleError> {
        let tid = look.tid;
        let look_counts_arrivals = look.arrivals != TaskLook::ARRIVALS_UNKNOWN;
        self.with_kept_files(tid, |reader| {
            let arrivals_before = match look_counts_arrivals {
                true => Some(look.arrivals),
                false => reader.read_run_count(tid)?,
            };
            let stack = reader.read_stack(syscall.sp);
            if reader.read_run_count(tid)? != arrivals_before
                || (!look_counts_arrivals
                    && reader.read_syscall(tid)? != ThreadSyscall::Blocked(syscall))
            {
                return Err(SampleError::Woke);
            }
            Ok(ThreadSample {
                tid,
                comm: crate::probes::comm_text(&look.comm),
                syscall,
                stack: stack?,
                blocked_for_at_least_ns: None,
                exec_start_ns: None,
                runs: Some(look.switches),
            })
        })
    }

    /// The syscall thread `tid` is blocked in and when it last stopped running, without
    /// copying its stack: enough to tell whether it is still in the wait an earlier read
    /// saw. Ok(None) when it is running or blocked outside a syscall.
    ///
    /// The thread's files stay open for the next peek and sample (see `forget_threads_except`).
    pub fn peek(&mut self, tid: u32) -> Result<Option<BlockedState>, SampleError> {
        self.with_kept_files(tid, |reader| reader.peek_once(tid))
    }

    /// Runs `read` on thread `tid` with its files kept open (while fewer than
    /// `max_kept_threads` threads keep theirs).
    fn with_kept_files<T>(
        &mut self,
        tid: u32,
        mut read: impl FnMut(&mut Self) -> Result<T, SampleError>,
    ) -> Result<T, SampleError> {
        if !self.kept_files.contains_key(&tid) && self.kept_files.len() < self.max_kept_threads {
            self.kept_files.insert(tid, KeptFiles::default());
        }
        match read(self) {
            // The kept files may belong to an earlier thread that had this id (ids are
            // reused): open them again; a thread really gone fails the open too.
            Err(SampleError::Exited) if self.kept_files.remove(&tid).is_some() => {
                self.kept_files.insert(tid, KeptFiles::default());
                read(self)
            }
            other => other,
        }
    }

    fn peek_once(&mut self, tid: u32) -> Result<Option<BlockedState>, SampleError> {
        let syscall = match self.read_syscall(tid)? {
            ThreadSyscall::Blocked(state) => state,
            ThreadSyscall::Running | ThreadSyscall::NotInSyscall { .. } => return Ok(None),
        };
        let runs = self.read_run_count(tid)?;
        Ok(Some(BlockedState { syscall, runs }))
    }

    /// Closes the files kept for threads not in `tids` (the threads listed now, sorted).
    pub fn forget_threads_except(&mut self, tids: &[u32]) {
        self.kept_files.retain(|tid, _| tids.binary_search(tid).is_ok());
    }

    /// The run count of thread `tid` (see [`BlockedState::runs`]).
    fn read_run_count(&mut self, tid: u32) -> Result<Option<u64>, SampleError> {
        match self.read_task_file(tid, "schedstat") {
            Ok(schedstat) => Ok(parse_run_count(&schedstat)),
            Err(error) if is_gone(&error) => Err(SampleError::Exited),
            Err(_) => Ok(None),
        }
    }

    /// `/proc/PID/task/TID/syscall`, parsed.
    fn read_syscall(&mut self, tid: u32) -> Result<ThreadSyscall, SampleError> {
        let text = self.read_task_file(tid, "syscall")?;
        parse_syscall(&text).ok_or_else(|| unexpected_syscall_file(&text))
    }

    /// Reads /proc/PID/task/TID/`leaf` into the reused buffer, with one read when it fits;
    /// through the kept file when the thread has kept files (see `peek`).
    fn read_task_file(&mut self, tid: u32, leaf: &str) -> io::Result<Cow<'_, str>> {
        self.path.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.path, "/proc/{}/task/{tid}/{leaf}", self.pid);
        let kept =
            KEPT_LEAVES.iter().position(|kept| *kept == leaf).zip(self.kept_files.get_mut(&tid));
        if let Some((slot, kept)) = kept {
            let file = match &mut kept.0[slot] {
                Some(file) => file,
                empty => empty.insert(File::open(&self.path)?),
            };
            return read_whole_at_start(file, &mut self.buf);
        }
        // Paths this short are turned into C strings on the stack: no allocation.
        let file = File::open(&self.path)?;
        read_whole_at_start(&file, &mut self.buf)
    }

    /// Copies the user stack from `sp` to the end of its mapping, at most `MAX_STACK_READ`.
    fn read_stack(&mut self, sp: u64) -> Result<Vec<u8>, SampleError> {
        let miss = self.mapping_of(sp).is_none()
            && self.missed_at.is_none_or(|missed_at| missed_at.elapsed() >= MAPS_REFRESH_MIN);
        if miss {
            self.missed_at = Some(Instant::now());
        }
        if self.mappings_stale || miss {
            self.refresh_mappings()?;
        }
        let Some(mapping) = self.mapping_of(sp) else {
            return Err(SampleError::Unreadable(io::Error::new(
                io::ErrorKind::NotFound,
                format!("stack pointer {sp:#x} is in no writable mapping"),
            )));
        };
        let len =
            usize::try_from(mapping.end - sp).map_or(MAX_STACK_READ, |len| len.min(MAX_STACK_READ));
        let mut stack = vec![0u8; len];
        let read = match read_memory(self.pid, sp, &mut stack) {
            Ok(read) => read,
            Err(error) => {
                // EFAULT: nothing mapped at sp any more; our mappings are out of date.
                self.mappings_stale = true;
                return Err(error.into());
            }
        };
        if read < len {
            // The mapping ended sooner than /proc/PID/maps said: it changed since we read it.
            // What we got is contiguous from sp, so it is a shorter stack, not a torn one.
            self.mappings_stale = true;
            stack.truncate(read);
        }
        Ok(stack)
    }

    fn mapping_of(&self, addr: u64) -> Option<Mapping> {
        let after = self.mappings.partition_point(|m| m.start <= addr);
        let mapping = *self.mappings.get(after.checked_sub(1)?)?;
        (addr < mapping.end).then_some(mapping)
    }

    fn refresh_mappings(&mut self) -> io::Result<()> {
        let maps = crate::pipeline::target::read_proc_text(format!("/proc/{}/maps", self.pid))?;
        self.mappings = parse_writable_mappings(&maps);
        self.mappings_stale = false;
        Ok(())
    }

    /// The scheduler clock of `cpu` now (see `SchedClock`).
    fn now_ns(&mut self, cpu: Option<usize>) -> Option<u64> {
        if !self.clock.as_ref().is_some_and(SchedClock::is_fresh) {
            self.clock = SchedClock::calibrate();
        }
        self.clock.as_ref()?.now_ns(cpu)
    }
}

/// Threads whose files stay open until told how many may (`keep_files_of_at_most`, from
/// the descriptor limit): three descriptors each, well inside the usual limit of 1,024
/// descriptors beside the probes' maps and the unwinder's binaries.
const DEFAULT_KEPT_THREADS: usize = 200;
/// The most threads whose files stay open, however high the limit: a process with more
/// opens the rest's files at each read.
const MAX_KEPT_THREADS: usize = 10_000;

/// The per-thread files every sampled read (`syscall`, `schedstat`) or every new wait
/// (`comm`) reads.
const KEPT_LEAVES: [&str; 3] = ["syscall", "schedstat", "comm"];

/// A thread's open files of `KEPT_LEAVES`, each opened at its first read.
#[derive(Default)]
struct KeptFiles([Option<File>; KEPT_LEAVES.len()]);

/// The names in a buffer of `linux_dirent64` records (getdents64(2)): an 8-byte inode,
/// an 8-byte offset, a 2-byte record length, a type byte, then the NUL-terminated name.
fn dirent_names(mut records: &[u8]) -> impl Iterator<Item = &[u8]> {
    const NAME_AT: usize = 19;
    std::iter::from_fn(move || {
        let reclen = usize::from(u16::from_ne_bytes([*records.get(16)?, *records.get(17)?]));
        let record = records.get(..reclen).filter(|_| reclen > NAME_AT)?;
        records = &records[reclen..];
        let name = &record[NAME_AT..];
        Some(&name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())])
    })
}

/// The whole text of an open /proc file, read again from its start into `buf` (a seq_file
/// read at offset 0 shows the state of now), growing `buf` when it does not fit. A name
/// in it (a thread's comm) may hold any bytes: invalid UTF-8 is replaced, not an error.
fn read_whole_at_start<'b>(file: &File, buf: &'b mut Vec<u8>) -> io::Result<Cow<'b, str>> {
    let mut len = 0;
    loop {
        let n = file.read_at(&mut buf[len..], len as u64)?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    Ok(String::from_utf8_lossy(&buf[..len]))
}

fn unexpected_syscall_file(text: &str) -> SampleError {
    SampleError::Unreadable(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected syscall file: {text:?}"),
    ))
}

/// The CPU a task last ran on: field 39 (`processor`) of /proc/PID/task/TID/stat.
fn parse_last_cpu(stat: &str) -> Option<usize> {
    crate::pipeline::target::stat_field(stat, 39)?.parse().ok()
}

/// The writable mappings of a /proc/PID/maps text (`start-end perms offset dev inode [path]`).
fn parse_writable_mappings(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.as_bytes();
            (perms.first() == Some(&b'r') && perms.get(1) == Some(&b'w')).then_some(())?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
            })
        })
        .collect()
}

/// Copies `buf.len()` bytes at `addr` of process `pid`; returns how many were copied (fewer
/// when the range runs into unmapped memory).
pub(crate) fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: `local` describes `buf`, which we borrow mutably for the call and which is
    // `iov_len` bytes long; `remote` names memory of the other process, which the kernel
    // checks and never dereferences in ours.
    let read = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    // A negative count is the only failure; try_from turns it into errno.
    usize::try_from(read).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests;
