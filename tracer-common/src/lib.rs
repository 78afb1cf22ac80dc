//! Types shared by the kernel probes (`tracer-ebpf`) and the userspace daemon (`tracer`).
//!
//! Every struct here crosses the kernel/user boundary through a BPF map or the ring
//! buffer, so each is `#[repr(C)]`, `Copy`, has explicit padding, and uses `u32`
//! flags instead of `bool`.
#![no_std]

/// Bytes of user stack copied (from the thread's stack pointer upwards) for each wait
/// over the threshold. Enough for the call chains of a thread pool behind glibc or
/// Rust's std; a frame with a larger local buffer pushes its callers out of the copy,
/// which userspace reports as a truncated stack.
pub const STACK_COPY_BYTES: usize = 16 * 1024;

/// What a thread was blocked in. The kernel knows the syscall, not yet whether a
/// `read`/`write` descriptor is a socket; userspace resolves that.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitKind {
    /// futex(2) waits and locks, futex_waitv(2), futex_wait(2).
    Futex = 0,
    /// send, sendto, sendmsg, sendmmsg.
    Send = 1,
    /// recv, recvfrom, recvmsg, recvmmsg.
    Recv = 2,
    /// connect(2).
    Connect = 3,
    /// accept, accept4.
    Accept = 4,
    /// poll, ppoll, select, pselect6, epoll_wait, epoll_pwait, epoll_pwait2.
    Poll = 5,
    /// read, readv: a socket wait only if the descriptor is a socket.
    Read = 6,
    /// write, writev: a socket wait only if the descriptor is a socket.
    Write = 7,
    /// A goroutine parked in the Go scheduler (never seen by the probes); the object is
    /// its wait reason (`chan receive`, `IO wait`, ...).
    Goroutine = 8,
    /// An asyncio task pending in its event loop (read from a CPython process's memory,
    /// never by the probes); the object is what it awaits (`recv 10.0.0.5:80`, `Lock L`).
    Task = 9,
}

/// Number of [`WaitKind`] variants (the size of per-kind arrays).
pub const WAIT_KIND_COUNT: usize = 10;

impl WaitKind {
    /// Every kind, in discriminant order.
    pub const ALL: [WaitKind; WAIT_KIND_COUNT] = [
        WaitKind::Futex,
        WaitKind::Send,
        WaitKind::Recv,
        WaitKind::Connect,
        WaitKind::Accept,
        WaitKind::Poll,
        WaitKind::Read,
        WaitKind::Write,
        WaitKind::Goroutine,
        WaitKind::Task,
    ];

    /// The kind with this discriminant, if any.
    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.get(value as usize).copied()
    }

    /// The short name used in reports (`[futex]`, `[send]`, ...).
    pub fn name(self) -> &'static str {
        match self {
            WaitKind::Futex => "futex",
            WaitKind::Send => "send",
            WaitKind::Recv => "recv",
            WaitKind::Connect => "connect",
            WaitKind::Accept => "accept",
            WaitKind::Poll => "poll",
            WaitKind::Read => "read",
            WaitKind::Write => "write",
            WaitKind::Goroutine => "goroutine",
            WaitKind::Task => "task",
        }
    }
}

/// x86_64 syscall numbers of the watched calls (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod syscall_nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const POLL: i64 = 7;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const SELECT: i64 = 23;
    pub const CONNECT: i64 = 42;
    pub const ACCEPT: i64 = 43;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const FUTEX: i64 = 202;
    pub const EPOLL_WAIT: i64 = 232;
    pub const PSELECT6: i64 = 270;
    pub const PPOLL: i64 = 271;
    pub const EPOLL_PWAIT: i64 = 281;
    pub const ACCEPT4: i64 = 288;
    pub const RECVMMSG: i64 = 299;
    pub const SENDMMSG: i64 = 307;
    pub const EPOLL_PWAIT2: i64 = 441;
    pub const FUTEX_WAITV: i64 = 449;
    pub const FUTEX_WAKE: i64 = 454;
    pub const FUTEX_WAIT: i64 = 455;
}

// futex(2) operations that can block (include/uapi/linux/futex.h); wakes and
// requeues are not waits.
const FUTEX_CMD_MASK: u64 = !(128 | 256); // ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
const FUTEX_WAIT: u64 = 0;
const FUTEX_LOCK_PI: u64 = 6;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAIT_REQUEUE_PI: u64 = 11;
const FUTEX_LOCK_PI2: u64 = 13;

/// Whether a futex(2) operation wakes waiters: WAKE, REQUEUE, CMP_REQUEUE, WAKE_OP,
/// UNLOCK_PI, WAKE_BITSET, CMP_REQUEUE_PI (include/uapi/linux/futex.h).
#[inline(always)]
pub fn is_futex_wake(op: u64) -> bool {
    const FUTEX_WAKE: u64 = 1;
    const FUTEX_REQUEUE: u64 = 3;
    const FUTEX_CMP_REQUEUE: u64 = 4;
    const FUTEX_WAKE_OP: u64 = 5;
    const FUTEX_UNLOCK_PI: u64 = 7;
    const FUTEX_WAKE_BITSET: u64 = 10;
    const FUTEX_CMP_REQUEUE_PI: u64 = 12;
    matches!(
        op & FUTEX_CMD_MASK,
        FUTEX_WAKE
            | FUTEX_REQUEUE
            | FUTEX_CMP_REQUEUE
            | FUTEX_WAKE_OP
            | FUTEX_UNLOCK_PI
            | FUTEX_WAKE_BITSET
            | FUTEX_CMP_REQUEUE_PI
    )
}

/// The wait kind of a syscall and what it waits on (the futex address, or the
/// descriptor), or None when the call is not watched. `arg(n)` reads argument `n`; only
/// the arguments needed are read. The probes and `tracer snapshot` share this rule.
#[inline(always)]
pub fn classify_syscall<E>(
    nr: i64,
    arg: impl Fn(usize) -> Result<u64, E>,
) -> Result<Option<(WaitKind, u64)>, E> {
    use syscall_nr::*;
    let watched = match nr {
        FUTEX => match arg(1)? & FUTEX_CMD_MASK {
            self::FUTEX_WAIT
            | FUTEX_LOCK_PI
            | FUTEX_WAIT_BITSET
            | FUTEX_WAIT_REQUEUE_PI
            | FUTEX_LOCK_PI2 => Some((WaitKind::Futex, arg(0)?)),
            _ => None,
        },
        syscall_nr::FUTEX_WAIT => Some((WaitKind::Futex, arg(0)?)),
        // The object is the array of waiters; no single lock to name.
        FUTEX_WAITV => Some((WaitKind::Futex, arg(0)?)),
        SENDTO | SENDMSG | SENDMMSG => Some((WaitKind::Send, arg(0)?)),
        RECVFROM | RECVMSG | RECVMMSG => Some((WaitKind::Recv, arg(0)?)),
        CONNECT => Some((WaitKind::Connect, arg(0)?)),
        ACCEPT | ACCEPT4 => Some((WaitKind::Accept, arg(0)?)),
        READ | READV => Some((WaitKind::Read, arg(0)?)),
        WRITE | WRITEV => Some((WaitKind::Write, arg(0)?)),
        POLL | PPOLL | SELECT | PSELECT6 | EPOLL_WAIT | EPOLL_PWAIT | EPOLL_PWAIT2 => {
            Some((WaitKind::Poll, 0))
        }
        _ => None,
    };
    Ok(watched)
}

/// Default sizes of the probes' ring buffers: long waits (16 MiB, about a thousand
/// records with their stack copies) and the wakers of long futex waits.
pub const WAITS_RING_BYTES: u32 = 16 * 1024 * 1024;
pub const WAKES_RING_BYTES: u32 = 4 * 1024 * 1024;

/// Slots of the WAIT_STARTS array: a word per thread that tells whether its latest wait
/// is in progress, since when and of which kind. A wait is noted in its thread's word,
/// taken by a compare-and-swap: an array is reached without a helper call (the verifier
/// inlines its lookup), task storage through one. Thread `tid` has slot
/// `tid % WAIT_START_SLOTS`; while another thread's wait in progress holds the word, a
/// wait is noted in task storage instead (IN_FLIGHT).
pub const WAIT_START_SLOTS: u32 = 1 << 16;

/// How many of a thread's waits in a row ended under the threshold, kept (in a plain
/// array, a slot per `tid % WAIT_START_SLOTS`) only while no probe sees wakes: a long wait
/// is then read where its thread is switched back in, most often after the idle task or
/// another process's thread, in whose view the target's memory cannot be read, so its
/// sleep keeps a copy of its stack. A thread whose last waits all ended short (a
/// ping-pong's) is taken to wait short again, and sleeps without one: copies at every
/// handoff would cost it dearly (one that waits long after all gets its copy from the
/// tracer while it sleeps, `pipeline::late_copies`). Threads sharing a slot share a
/// guess, nothing more.
pub struct ShortRun;

impl ShortRun {
    /// Waits ended short in a row after which a sleep keeps no copy.
    pub const SKIP_COPY_AFTER: u32 = 4;

    /// The run after a wait ended, long or not.
    #[inline(always)]
    pub fn after(run: u32, long: bool) -> u32 {
        if long { 0 } else { (run + 1).min(Self::SKIP_COPY_AFTER) }
    }

    /// Whether a thread whose run is `run` keeps a copy of its stack as it sleeps.
    #[inline(always)]
    pub fn keeps_copy(run: u32) -> bool {
        run < Self::SKIP_COPY_AFTER
    }
}

/// A WAIT_STARTS word, from its low bits up:
/// - 7 bits of tag, `tid / WAIT_START_SLOTS + 1`: thread ids are below 2^22 (the kernel's
///   PID_MAX_LIMIT on 64-bit), and a word never written (0) is no thread's;
/// - 1 bit set while the wait is in progress;
/// - 4 bits of [`WaitKind`];
/// - 1 bit set when the wait's sleep copy should be sent even if the wait ends short (a
///   span sample, see [`SleepStack::whole_copies`]);
/// - the low 51 bits of the wait's start (`CLOCK_MONOTONIC`). Times are compared modulo
///   2^51 ns: a wait shorter than 2^50 ns (13 days) is timed exactly, and a clock reading
///   a little before the start (two clocks, two CPUs) times it as 0, not as 26 days.
///
/// A word is stored whole, so threads sharing a slot never mix their halves.
const WAIT_WORD_TAG_BITS: u32 = 7;
const WAIT_WORD_IN_PROGRESS: u64 = 1 << WAIT_WORD_TAG_BITS;
const WAIT_WORD_KIND_SHIFT: u32 = WAIT_WORD_TAG_BITS + 1;
const WAIT_WORD_SPAN_SAMPLE: u64 = 1 << (WAIT_WORD_KIND_SHIFT + 4);
const WAIT_WORD_START_SHIFT: u32 = WAIT_WORD_KIND_SHIFT + 5;
const WAIT_WORD_START_MASK: u64 = u64::MAX >> WAIT_WORD_START_SHIFT;

/// What a WAIT_STARTS word says of one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitSlot {
    /// The word is another thread's, or was never written: task storage tells.
    Unknown,
    /// The thread's latest wait has ended.
    Ended,
    /// The thread is in a wait of `kind` (a [`WaitKind`] discriminant) begun at `start`, a
    /// clock reading cut to the word's bits (see [`WaitSlot::elapsed_ns`]); `span_sample`:
    /// its sleep copy is to be sent even if it ends short.
    InProgress { start: u64, kind: u32, span_sample: bool },
}

impl WaitSlot {
    #[inline(always)]
    fn tag(tid: u32) -> u64 {
        u64::from(tid / WAIT_START_SLOTS) + 1
    }

    /// The word of thread `tid` going to sleep at `start_ns` in a wait of `kind`.
    #[inline(always)]
    pub fn in_progress_word(tid: u32, kind: u32, start_ns: u64, span_sample: bool) -> u64 {
        let sample = if span_sample { WAIT_WORD_SPAN_SAMPLE } else { 0 };
        (start_ns & WAIT_WORD_START_MASK) << WAIT_WORD_START_SHIFT
            | sample
            | u64::from(kind & 0xf) << WAIT_WORD_KIND_SHIFT
            | WAIT_WORD_IN_PROGRESS
            | Self::tag(tid)
    }

    /// The word of thread `tid` whose wait has ended.
    #[inline(always)]
    pub fn ended_word(tid: u32) -> u64 {
        Self::tag(tid)
    }

    /// What `word` says of thread `tid`.
    #[inline(always)]
    pub fn read(word: u64, tid: u32) -> WaitSlot {
        const TAG_MASK: u64 = (1 << WAIT_WORD_TAG_BITS) - 1;
        if word & TAG_MASK != Self::tag(tid) {
            WaitSlot::Unknown
        } else if word & WAIT_WORD_IN_PROGRESS == 0 {
            WaitSlot::Ended
        } else {
            WaitSlot::InProgress {
                start: word >> WAIT_WORD_START_SHIFT,
                kind: (word >> WAIT_WORD_KIND_SHIFT) as u32 & 0xf,
                span_sample: word & WAIT_WORD_SPAN_SAMPLE != 0,
            }
        }
    }

    /// Nanoseconds from `start` (of [`WaitSlot::InProgress`]) to the clock reading `now_ns`.
    #[inline(always)]
    pub fn elapsed_ns(start: u64, now_ns: u64) -> u64 {
        let elapsed = now_ns.wrapping_sub(start) & WAIT_WORD_START_MASK;
        if elapsed > WAIT_WORD_START_MASK / 2 { 0 } else { elapsed }
    }

    /// The whole start (`CLOCK_MONOTONIC`) of a wait whose word holds `start`, rebuilt
    /// from a clock reading `now_ns` within 2^50 ns of it, before or after: exactly the
    /// start its sleep's probe took (and keyed its sleep copy by), even where `now_ns` is a
    /// little before it and [`WaitSlot::elapsed_ns`] says 0.
    #[inline(always)]
    pub fn start_ns(start: u64, now_ns: u64) -> u64 {
        let behind = now_ns.wrapping_sub(start) & WAIT_WORD_START_MASK;
        // The 51-bit difference, signed: its top bit moved to bit 63 and shifted back.
        let signed = ((behind << WAIT_WORD_START_SHIFT) as i64) >> WAIT_WORD_START_SHIFT;
        now_ns.wrapping_sub(signed as u64)
    }

    /// Whether `word` holds a wait in progress of a thread other than `tid`: `tid`'s wait
    /// must then be noted in task storage.
    #[inline(always)]
    pub fn held_by_another(word: u64, tid: u32) -> bool {
        word & WAIT_WORD_IN_PROGRESS != 0 && WaitSlot::read(word, tid) == WaitSlot::Unknown
    }

    /// What a probe makes of thread `tid`'s wait from its word alone. `now_ns` reads the
    /// clock, called only for a wait in progress: a switch in of a thread in no wait reads
    /// none.
    #[inline(always)]
    pub fn verdict(
        word: u64,
        tid: u32,
        min_wait_ns: u64,
        now_ns: impl FnOnce() -> u64,
    ) -> WordVerdict {
        WaitSlot::read(word, tid).judge(min_wait_ns, now_ns)
    }

    /// As [`WaitSlot::verdict`], of a word already read.
    #[inline(always)]
    pub fn judge(self, min_wait_ns: u64, now_ns: impl FnOnce() -> u64) -> WordVerdict {
        match self {
            WaitSlot::Ended => WordVerdict::NoWait,
            WaitSlot::InProgress { start, kind, span_sample } => {
                let now_ns = now_ns();
                let start_ns = WaitSlot::start_ns(start, now_ns);
                let elapsed_ns = WaitSlot::elapsed_ns(start, now_ns);
                if elapsed_ns < min_wait_ns {
                    WordVerdict::Short { kind, start_ns, elapsed_ns, span_sample }
                } else {
                    WordVerdict::Long { kind, start_ns, elapsed_ns }
                }
            }
            WaitSlot::Unknown => WordVerdict::AskTaskStorage,
        }
    }
}

/// See [`WaitSlot::verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WordVerdict {
    /// The thread is in no wait.
    NoWait,
    /// A wait of `kind`, begun at `start_ns` ([`WaitSlot::start_ns`]), under the threshold
    /// so far: its wake (or, when its wake was not seen, its switch in) ends it by the
    /// word alone; `span_sample`: its sleep copy is to be sent all the same (see
    /// [`SleepStack::whole_copies`]).
    Short { kind: u32, start_ns: u64, elapsed_ns: u64, span_sample: bool },
    /// A wait of `kind`, begun at `start_ns`, that has lasted the threshold: sent with its
    /// stack where it ends.
    Long { kind: u32, start_ns: u64, elapsed_ns: u64 },
    /// A word that is another thread's: the wait, if any, is in task storage (IN_FLIGHT).
    AskTaskStorage,
}

/// The offset from the run queues' clock (`sched_clock`, which the scheduler reads at
/// every switch) to `CLOCK_MONOTONIC`, measured at the tracer's own switches: the switch
/// probe then times waits without reading a clock itself.
///
/// A run queue's clock is read at the start of `__schedule`, or earlier when a wake that
/// preempts has the switch skip its update (tens of µs on this VM's idle CPUs): each
/// measure is the offset plus that delay, never less. The offset is the least measure of
/// the last two windows of `WINDOW_NS`: late by at most two windows of the clocks' drift
/// (NTP's slewing of the monotonic clock, about 0.5 µs a second here). The probe keeps the
/// words in an array map; offsets are compared by their signed difference, as either sign
/// is possible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchClock {
    /// `CLOCK_MONOTONIC - rq clock` (wrapping); valid once `measured` is 1.
    pub offset: u64,
    pub measured: u64,
    /// The least measure of the last window that ended, and of the one in progress.
    pub last_window_min: u64,
    pub window_min: u64,
    /// When the window in progress ends (`CLOCK_MONOTONIC`).
    pub window_end_ns: u64,
}

impl SwitchClock {
    pub const WINDOW_NS: u64 = 500_000_000;

    /// Takes in a measure (`CLOCK_MONOTONIC` at `now_ns` minus the run queue's clock).
    #[inline(always)]
    pub fn measure(&mut self, now_ns: u64, measure: u64) {
        let least = |a: u64, b: u64| if (a.wrapping_sub(b) as i64) < 0 { a } else { b };
        if self.measured == 0 {
            (self.last_window_min, self.window_min) = (measure, measure);
            self.window_end_ns = now_ns + Self::WINDOW_NS;
        } else if now_ns >= self.window_end_ns {
            (self.last_window_min, self.window_min) = (self.window_min, measure);
            self.window_end_ns = now_ns + Self::WINDOW_NS;
        } else {
            self.window_min = least(self.window_min, measure);
        }
        self.offset = least(self.last_window_min, self.window_min);
        self.measured = 1;
    }
}

/// A thread's wait in progress, in the thread's task storage, where a wait is noted when
/// another thread's wait holds its WAIT_STARTS word (and where the tracer puts a wait it
/// finds in progress at the attach); the probes also build one from a word to end a long
/// wait. Noted when the thread goes to sleep inside a watched call, ended when it is woken
/// or switched back in. The entry stays between waits, so that each wait rewrites it in
/// place; the kernel frees it with the task. A wait ended through task storage leaves it
/// idle (`start_ns == 0`); a later wait noted in the word leaves it as it was, and
/// `switches` tells it is over: the thread has been switched out since.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InFlightWait {
    /// `CLOCK_MONOTONIC` when the thread went to sleep in the call (the switch's clock,
    /// see [`SwitchClock`]); 0 when the thread is in no wait.
    pub start_ns: u64,
    /// What is waited on: the futex address, or the descriptor for socket calls.
    pub object: u64,
    /// The thread's context switches (voluntary and not) counted when it went to sleep,
    /// its sleep's own included: the wait is in progress only while the count is the same.
    pub switches: u64,
    /// A [`WaitKind`] discriminant.
    pub kind: u32,
    /// The thread's id (the entry hangs off its task; a waker's probe reads it here).
    pub tid: u32,
    /// `WAIT_BEGAN_BEFORE`, `WAIT_SPAN_SAMPLE`, or 0.
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}

impl InFlightWait {
    /// Whether this is a wait in progress of a thread that has now been switched out
    /// `switches` times. An adopted wait (`WAIT_BEGAN_BEFORE`) was noted without a count;
    /// only task storage ends it, so its `start_ns` alone tells.
    #[inline(always)]
    pub fn in_progress(&self, switches: u64) -> bool {
        self.start_ns != 0 && (self.flags & WAIT_BEGAN_BEFORE != 0 || self.switches == switches)
    }
}

/// A wait that was already in progress when the probes were attached, noted by userspace
/// from the thread's saved state: `start_ns` is when it was noted, not when it began.
pub const WAIT_BEGAN_BEFORE: u32 = 1;

/// In [`InFlightWait::flags`]: the wait's sleep copy is to be sent even if the wait ends
/// short. In [`WaitRecord::flags`]: the record is such a copy, sent only for userspace to
/// walk and learn the thread's [`StackSpan`]; not a wait to report.
pub const WAIT_SPAN_SAMPLE: u32 = 2;

/// In [`WaitRecord::flags`]: the record's stack is its sleep copy (`SleepStack`), whose
/// walk tells how much of the thread's stack later copies at the same registers need.
pub const WAIT_STACK_FROM_SLEEP_COPY: u32 = 4;

/// A thread's whole sleep copies (no span known for their registers) are sent as span
/// samples at first often, then one in this many (see [`is_span_sample`]): a walk that
/// could not size the copy (a stack deeper than the copy, an unwinding failure) is retried
/// now and then, not at every sleep.
pub const SPAN_SAMPLE_EVERY: u32 = 1024;

/// Whether a thread's `whole_copies`th whole sleep copy is sent as a span sample: the 1st,
/// 2nd, 4th, … 1024th, then every [`SPAN_SAMPLE_EVERY`]th. Early ones come often, so that a
/// thread that begins sleeping at a second place soon has a span for it too.
#[inline(always)]
pub const fn is_span_sample(whole_copies: u32) -> bool {
    whole_copies.is_power_of_two() || whole_copies.is_multiple_of(SPAN_SAMPLE_EVERY)
}

/// Threads whose user stack can be kept from the moment they went to sleep (the
/// SLEEP_STACKS map, least recently used first out): 16 MiB of kernel memory.
pub const SLEEP_STACK_SLOTS: u32 = 1024;

/// A copy of a thread's user stack taken as it went to sleep, for waits whose waker is
/// likely outside the process (a socket's data, a timeout): when such a wait ends, no
/// probe runs where the sleeping thread's memory can be read.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SleepStack {
    /// The wait this copy belongs to ([`InFlightWait::start_ns`]).
    pub start_ns: u64,
    /// Bytes of `stack` that hold data.
    pub len: u32,
    /// Bytes the probe asked for: `STACK_COPY_BYTES`, or what the thread's last walk
    /// from the same registers read (see [`StackSpan`]). A copy shorter than this ended at
    /// the top of the thread's stack.
    pub asked: u32,
    /// Whole copies taken for this thread so far (copies with no span known for their
    /// registers); some are span samples ([`is_span_sample`]). A wait
    /// that ends short has no stack to report, and spans are otherwise learned only from
    /// long waits: a thread whose waits were all short would copy its whole stack, 16 KiB,
    /// at every sleep.
    pub whole_copies: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The user stack copied from the saved stack pointer upwards.
    pub stack: [u8; STACK_COPY_BYTES],
}

/// Threads whose stack spans are remembered (the STACK_SPANS map, least recently used
/// first out).
pub const STACK_SPAN_SLOTS: u32 = 4096;

/// How much of a thread's stack the last complete walk from one place (its registers as it
/// went to sleep) read. A thread that goes to sleep again with the same registers (a loop
/// waiting in the same call, at the same depth) most likely has the same callers above it,
/// so its sleep copy takes only this much. The copy is taken at every sleep of a socket
/// wait, long or short, and 16 KiB of it cost the sleeping thread's CPU a few microseconds
/// here, mostly for bytes no walk reads. A walk that runs off a shortened copy is counted
/// as truncated, and that place's span forgotten.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackSpan {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes from `sp` up (at most `STACK_COPY_BYTES`); 0 in an unused site.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Places a thread's spans are kept for: a server thread often sleeps at a few (a poll, a
/// read, a write), and with one span it would copy its whole stack at all but one of them.
pub const STACK_SPAN_SITES: usize = 4;

/// A thread's spans, the most recently learned first: the value of the STACK_SPANS map, by
/// tid, written by userspace as it walks the stacks of the thread's sleep copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSpans {
    pub sites: [StackSpan; STACK_SPAN_SITES],
}

impl ThreadSpans {
    /// The index of the site learned at these registers.
    #[inline(always)]
    pub fn site(&self, ip: u64, sp: u64, bp: u64) -> Option<usize> {
        self.sites.iter().position(|s| s.len != 0 && s.ip == ip && s.sp == sp && s.bp == bp)
    }

    /// How much a sleep copy at these registers takes: the site's span, else the whole.
    #[inline(always)]
    pub fn copy_len(&self, ip: u64, sp: u64, bp: u64) -> u32 {
        match self.site(ip, sp, bp) {
            Some(index) => self.sites[index].len,
            None => STACK_COPY_BYTES as u32,
        }
    }

    /// These spans with `span` learned: in its site's place when it has one, else first,
    /// the least recently learned site dropped.
    pub fn with(mut self, span: StackSpan) -> Self {
        match self.site(span.ip, span.sp, span.bp) {
            Some(index) => self.sites[index] = span,
            None => {
                self.sites.rotate_right(1);
                self.sites[0] = span;
            }
        }
        self
    }

    /// These spans with site `index` forgotten (the later ones move up).
    pub fn without(mut self, index: usize) -> Self {
        if index < STACK_SPAN_SITES {
            self.sites[index..].rotate_left(1);
            self.sites[STACK_SPAN_SITES - 1] = StackSpan::default();
        }
        self
    }

    /// No site learned.
    pub fn is_empty(&self) -> bool {
        self.sites.iter().all(|s| s.len == 0)
    }
}

/// A wait over the threshold, sent through the ring buffer when it ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WaitRecord {
    /// Thread id (kernel pid) of the waiter.
    pub tid: u32,
    /// A [`WaitKind`] discriminant.
    pub kind: u32,
    /// `CLOCK_MONOTONIC` when the thread went to sleep in the call (see [`SwitchClock`]).
    pub start_ns: u64,
    /// Time from that sleep to the wake (or the switch back in), in nanoseconds.
    pub duration_ns: u64,
    /// The futex address, or the descriptor for socket calls.
    pub object: u64,
    /// User instruction pointer at the syscall (the unwinder's first frame).
    pub ip: u64,
    /// User stack pointer at the syscall; `stack` is a copy from here upwards.
    pub sp: u64,
    /// User frame pointer (rbp), the fallback unwinder's start.
    pub bp: u64,
    /// Bytes of `stack` that hold data (0 when the stack could not be read).
    pub stack_len: u32,
    /// The waiter's thread name (`comm`), NUL-padded.
    pub comm: [u8; 16],
    /// The wait's [`InFlightWait::flags`].
    pub flags: u32,
    /// The inode of the socket or pipe the descriptor `object` was open on as the wait
    /// ended (read before userspace looks: the descriptor may be closed and reused by
    /// then); 0 when not read (a futex or poll wait, a kernel without the path).
    pub object_inode: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The user stack copied from `sp`.
    pub stack: [u8; STACK_COPY_BYTES],
}

/// One look at a task, as the task iterator writes it for each task it walks: its ids,
/// whether it sleeps, how often it has been switched out, and the user registers it
/// saved on entering the kernel (its syscall, arguments, sp and ip, which /proc shows too,
/// and bp, which /proc does not and CFI unwinding can need). A sampled recording reads
/// its target's threads with one pass of these instead of two /proc files per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskLook {
    /// Thread id (`task_struct.pid`).
    pub tid: u32,
    /// Process id (`task_struct.tgid`).
    pub tgid: u32,
    /// `task_struct.__state`: 0 while running or waiting for a CPU.
    pub state: u32,
    /// `task_struct.on_cpu`: not 0 while it is still on a CPU, which a thread going to
    /// sleep is between setting its state and switching out.
    pub on_cpu: u32,
    /// `nvcsw + nivcsw`: how often it has been switched out. A thread blocked now that
    /// ran since an earlier look was switched out again since, so the same count and
    /// call mean the same wait.
    pub switches: u64,
    /// `sched_info.pcount`: how often it has arrived on a CPU, as /proc's `schedstat`
    /// shows it (its third field), so that one read of that file after a stack copy tells
    /// whether the thread ran since this look. [`TaskLook::ARRIVALS_UNKNOWN`] on kernels
    /// without `CONFIG_SCHED_INFO`.
    pub arrivals: u64,
    /// `orig_rax`: the syscall it is in; negative outside any.
    pub syscall_nr: i64,
    /// The syscall's arguments (rdi, rsi, rdx, r10, r8, r9).
    pub args: [u64; 6],
    /// User instruction pointer.
    pub ip: u64,
    /// User stack pointer.
    pub sp: u64,
    /// User frame pointer (rbp).
    pub bp: u64,
    /// Its name (`comm`), NUL-padded.
    pub comm: [u8; 16],
}

impl TaskLook {
    /// `arrivals` where the kernel keeps no count of them.
    pub const ARRIVALS_UNKNOWN: u64 = u64::MAX;
}

/// The tag of a [`PassLook`] in the PASSES ring.
pub const PASS_LOOK: u32 = 1;
/// The tag of a [`PassStack`] in the PASSES ring.
pub const PASS_STACK: u32 = 2;
/// The tag of a [`PassEnd`] in the PASSES ring.
pub const PASS_END: u32 = 3;

/// One thread as a sampled recording's pass in the kernel saw it (`tracer_sample_pass`):
/// what a task iterator's look holds, with the pass it belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PassLook {
    /// [`PASS_LOOK`].
    pub tag: u32,
    /// Which pass (`pass_id` of its time).
    pub pass: u32,
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) of the pass.
    pub time_ns: u64,
    pub look: TaskLook,
}

/// The user stack of a thread a pass found newly blocked, copied where the pass ran in
/// the thread's process (in its memory), after the pass's looks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PassStack {
    /// [`PASS_STACK`].
    pub tag: u32,
    /// Bytes copied from `sp` upwards (all of `stack` unless the mapping ended first).
    pub len: u32,
    pub tid: u32,
    /// The pass whose look found the wait.
    pub pass: u32,
    /// The thread's process.
    pub tgid: u32,
    pub _pad: u32,
    /// The wait's switch count ([`TaskLook::switches`]); the thread did not arrive on a
    /// CPU during the copy.
    pub switches: u64,
    pub sp: u64,
    pub stack: [u8; STACK_COPY_BYTES],
}

/// The last record of a pass over one process: how many looks it wrote and how many
/// threads it missed. A drain may land while a pass is still writing on another CPU; only a
/// pass whose end came, with all its looks and none missed, is read (a pass missing a
/// thread would end that thread's wait).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassEnd {
    /// [`PASS_END`].
    pub tag: u32,
    pub pass: u32,
    /// The process walked (a pass walks each process the passes watch, one after another).
    pub tgid: u32,
    /// Looks the pass wrote.
    pub looks: u32,
    /// Threads it wrote no look of (the ring was full), or 1 for those it could not reach
    /// (the thread list could not be read on, or grew past what the pass could walk).
    pub missed: u32,
    /// The process's threads when it has more than a pass walks (`PASS_MAX_THREADS`):
    /// no pass walks it, and this end, without looks, says so; 0 otherwise.
    pub unwalkable_threads: u32,
}

/// Whether a timer tick at `now_ns` makes a pass, given the passes' `period_ns` and the
/// time of the last pass: one pass per period (`now / period`), and none within half a
/// period of the last. The CPUs' timers tick at about the same phase, and when that
/// phase is at a period's boundary one CPU's tick would make the pass of the period
/// ending and the other's, microseconds later, the next one's, the two passes running at
/// once. The tick then swaps its time for `last_pass_ns`: one compare-and-swap of one
/// word claims the pass, and a new period needs nothing reset (both times are numbered in
/// it).
pub fn pass_claim(now_ns: u64, period_ns: u64, last_pass_ns: u64) -> bool {
    let (Some(this_period), Some(last_period)) =
        (now_ns.checked_div(period_ns), last_pass_ns.checked_div(period_ns))
    else {
        return false;
    };
    let spaced = now_ns.saturating_sub(last_pass_ns) >= period_ns / 2;
    this_period > last_period && spaced
}

/// The id of the pass made at `time_ns` in its records: the low 32 bits of its time,
/// which differ between any two passes a drain can hold (they wrap every 4.3 s).
pub fn pass_id(time_ns: u64) -> u32 {
    time_ns as u32
}

/// Threads a pass in the kernel walks at most, over all its processes. A pass walks
/// whole processes, one after another, while their threads fit; the next pass starts with
/// the first it left (`Counter::PassesCut`), so that processes of more threads in all are
/// walked in turns, each every few periods. A process of more by itself is read from
/// userspace ([`PassEnd::unwalkable_threads`]). A pass spends about a microsecond of a
/// timer interrupt on each thread, so this bounds a tick.
pub const PASS_MAX_THREADS: u32 = 1024;

/// Processes the passes in the kernel watch at most (the PASS_PROCESSES array's slots):
/// those of a recording of several beyond them are read from userspace. As many as a
/// pass walks threads: a pass steps over each slot once at most, so the bound on its
/// threads bounds its processes too.
pub const PASS_MAX_PROCESSES: u32 = 1024;

/// The index in the PASS_STATE array of the passes' period in nanoseconds, which
/// userspace sets once the passes are attached (0: no pass is made).
pub const PASS_STATE_PERIOD_NS: u32 = 3;

/// The index in the PASS_STATE array of the time of the last pass (`bpf_ktime_get_ns`):
/// a tick claims its pass by swapping its own time in (`pass_claim`).
pub const PASS_STATE_LAST_PASS_NS: u32 = 0;

/// The index in the PASS_STATE array of how many of the PASS_PROCESSES array's slots a
/// pass looks at (one past the last used), which userspace keeps.
pub const PASS_STATE_PROCESS_SLOTS: u32 = 1;

/// The index in the PASS_STATE array of how many passes were made: each adds one as it
/// starts, and is known by the number it made.
pub const PASS_STATE_PASSES: u32 = 5;

/// The index in the PASS_STATE array of the last lap over every process the passes
/// watch: how many laps came round (the high 32 bits) and the number of the pass that
/// ended the last (the low 32 bits of its `PASS_STATE_PASSES` number), in one word that
/// userspace reads whole. Two of them apart say how many passes a lap took, which is how
/// many periods a process waits between two passes over it.
pub const PASS_STATE_LAST_LAP: u32 = 6;

/// Entries of the PASS_STATE array.
pub const PASS_STATE_ENTRIES: u32 = 7;

/// Bytes of the PASSES ring: a quarter of a second of passes over `PASS_MAX_THREADS`
/// threads at 49 a second is 1.9 MiB of looks (152 bytes each with the ring's header),
/// which leaves room for the 16 KiB stacks of about 380 new waits.
pub const PASSES_RING_BYTES: u32 = 8 << 20;

/// A thread of the target waking another one out of a long futex wait: the waker's
/// registers and stack at the wake (it is inside its futex-wake call).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WakeRecord {
    /// The thread that wakes.
    pub waker_tid: u32,
    /// The thread woken (its wait is in the in-flight map).
    pub wakee_tid: u32,
    /// When the woken wait began: with `wakee_tid`, names the wait.
    pub wait_start_ns: u64,
    /// The waker's user instruction pointer (inside its futex-wake call).
    pub ip: u64,
    /// The waker's user stack pointer; `stack` is a copy from here upwards.
    pub sp: u64,
    /// The waker's user frame pointer (rbp).
    pub bp: u64,
    /// Bytes of `stack` that hold data.
    pub stack_len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The waker's user stack copied from `sp`.
    pub stack: [u8; STACK_COPY_BYTES],
}

/// Count and total time of the waits of one kind that stayed under the threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ShortWaitTotals {
    /// Number of waits.
    pub count: u64,
    /// Their summed duration, in nanoseconds.
    pub total_ns: u64,
}

/// Indices of the per-CPU event counters, so that every loss is counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Waits begun: a thread of the target went to sleep inside a watched call.
    WaitsStarted = 0,
    /// Waits whose thread was switched in unseen (rare: after a thread whose switches out
    /// reach no tracepoint, such as this VM's agent, PID 1, which ftrace does not log
    /// either) and that could not be timed when it next switched out: long ones, whose
    /// registers and stack had moved on. Left out, not reported with a wrong length; a
    /// short one is timed to the thread's last arrival and counted with the short waits.
    WaitsDiscarded = 1,
    /// Waits under the threshold (counted per kind, no stack).
    ShortWaits = 2,
    /// Waits over the threshold, sent with a stack.
    LongWaits = 3,
    /// Long waits dropped because the ring buffer was full.
    RingBufferFull = 4,
    /// Long waits sent without their user stack: unmapped, or ended where no probe could
    /// read it (a waker outside the process, with no copy kept from the sleep).
    StackUnreadable = 5,
    /// Long waits whose stack copy was shorter than `STACK_COPY_BYTES`.
    StackShortened = 6,
    /// Waits not tracked because the kernel could not allocate the thread's entry (task
    /// storage, out of memory).
    InFlightMapFull = 7,
    /// Wakes of long futex waits by the target's own threads, sent with the waker's stack.
    WakesSent = 8,
    /// Such wakes dropped because their ring buffer was full.
    WakeRingBufferFull = 9,
    /// Long waits whose stack came from a sleep copy taken in part: as far as the
    /// thread's last walk from the same registers read (see [`StackSpan`]).
    StackPartial = 10,
    /// Short waits' sleep copies sent for userspace to size the thread's later copies
    /// (`WAIT_SPAN_SAMPLE`).
    SpanSamples = 11,
    /// Span samples not sent: the ring buffer was full, the copy was gone by the wait's
    /// end, or a wake queued to the sleeper's CPU could not read its registers (only the
    /// copy's size is at stake: the thread copies its whole stack until a later sample).
    SpanSamplesDropped = 12,
    /// Sleep copies taken whole: no span known for their thread at their registers.
    SleepCopiesWhole = 13,
    /// Sleeps that kept a copy of their stack, whole or in part (waits likely to end where
    /// the sleeper's memory cannot be read).
    SleepCopies = 14,
    /// A pass's processes it found nothing to walk of: none known yet, or it is gone
    /// (counted per process, per pass).
    PassesWithoutProcess = 15,
    /// Passes that left processes to the next, their threads past `PASS_MAX_THREADS`.
    PassesCut = 16,
    /// Looks and stacks of passes the PASSES ring had no room for.
    PassRingFull = 17,
    /// Stacks of new waits a pass copied (it ran in their process).
    PassCopies = 18,
    /// New waits a pass could not copy (it ran outside their process): read by userspace
    /// at the drain if still in progress.
    PassCopiesLeft = 19,
    /// Copies a pass dropped because the thread arrived on a CPU meanwhile.
    PassCopiesTorn = 20,
    /// Nanoseconds the passes took, summed (not a count): what they cost the CPUs whose
    /// timer interrupt made them.
    PassNs = 21,
    /// A pass's processes it found and could not read whole: a thread missed (its look
    /// or the pass's end lost to a full ring, the thread list unreadable part way or
    /// longer than a walk): reads lost (counted per process, per pass).
    PassesIncomplete = 22,
}

/// A goroutine parked in the Go scheduler, noted by the `runtime.gopark` uprobe (the
/// value of the GO_PARKED map, keyed by goid) until `runtime.execute` runs it again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoPark {
    /// `bpf_ktime_get_ns` when the goroutine parked.
    pub start_ns: u64,
    /// gopark's return address (the frame-pointer walk from gopark's entry skips it).
    pub caller: u64,
    /// The goroutine's stack in the GO_STACKS map; [`GoPark::NO_STACK`] when the stack
    /// could not be stored.
    pub stack_id: u32,
    /// `runtime.waitReason`, an index into `runtime.waitReasonStrings`.
    pub reason: u32,
}

impl GoPark {
    /// `stack_id` of a park whose stack could not be stored.
    pub const NO_STACK: u32 = u32::MAX;
}

/// What ended goroutine waits are summed by (the key of the GO_WAITS map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoWaitKey {
    /// gopark's return address, as in [`GoPark::caller`].
    pub caller: u64,
    /// The stack in GO_STACKS, as in [`GoPark::stack_id`].
    pub stack_id: u32,
    /// `runtime.waitReason`, as in [`GoPark::reason`].
    pub reason: u32,
}

/// Count and total time of the ended goroutine waits with one [`GoWaitKey`] (the per-CPU
/// value of the GO_WAITS map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoWaitTotals {
    /// Number of waits.
    pub count: u64,
    /// Their summed duration, in nanoseconds.
    pub total_ns: u64,
}

/// Indices of the Go probes' per-CPU counters (the GO_COUNTERS map).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoCounter {
    /// Goroutines parked (gopark entries of the target).
    Parks = 0,
    /// Parks not tracked because GO_PARKED was full.
    ParksLost = 1,
    /// Parks whose stack could not be stored in GO_STACKS.
    StacksLost = 2,
    /// Ended waits not summed because GO_WAITS was full.
    WaitsLost = 3,
    /// Waits ended (a parked goroutine ran again).
    WaitsEnded = 4,
}

/// Number of [`GoCounter`] variants (the size of GO_COUNTERS).
pub const GO_COUNTER_COUNT: usize = 5;

impl GoCounter {
    /// Every counter, in index order.
    pub const ALL: [GoCounter; GO_COUNTER_COUNT] = [
        GoCounter::Parks,
        GoCounter::ParksLost,
        GoCounter::StacksLost,
        GoCounter::WaitsLost,
        GoCounter::WaitsEnded,
    ];
}

/// Number of [`Counter`] variants.
pub const COUNTER_COUNT: usize = 23;
const _: () = assert!(Counter::PassesIncomplete as usize + 1 == COUNTER_COUNT);
const _: () = assert!(core::mem::size_of::<PassLook>() == 144);
const _: () = assert!(core::mem::size_of::<PassStack>() == 40 + STACK_COPY_BYTES);
const _: () = assert!(core::mem::size_of::<PassEnd>() == 24);
const _: () = assert!(PASS_STATE_LAST_PASS_NS < PASS_STATE_ENTRIES);
const _: () = assert!(PASS_STATE_PROCESS_SLOTS < PASS_STATE_ENTRIES);
const _: () = assert!(PASS_STATE_LAST_LAP < PASS_STATE_ENTRIES);
const _: () = assert!(WaitKind::Task as usize + 1 == WAIT_KIND_COUNT);
// A kind fits the 4 bits of a WAIT_STARTS word.
const _: () = assert!(WAIT_KIND_COUNT <= 16);
// No implicit padding in the records that cross the ring buffers.
const _: () = assert!(core::mem::size_of::<WaitRecord>() == 88 + STACK_COPY_BYTES);
const _: () = assert!(core::mem::size_of::<WakeRecord>() == 48 + STACK_COPY_BYTES);
const _: () = assert!(core::mem::size_of::<InFlightWait>() == 40);
const _: () = assert!(core::mem::size_of::<TaskLook>() == 128);
const _: () = assert!(core::mem::size_of::<SleepStack>() == 24 + STACK_COPY_BYTES);
const _: () = assert!(core::mem::size_of::<StackSpan>() == 32);
const _: () = assert!(core::mem::size_of::<ThreadSpans>() == 32 * STACK_SPAN_SITES);
const _: () = assert!(GoCounter::WaitsEnded as usize + 1 == GO_COUNTER_COUNT);
// No implicit padding in the Go maps' keys and values.
const _: () = assert!(core::mem::size_of::<GoPark>() == 24);
const _: () = assert!(core::mem::size_of::<GoWaitKey>() == 16);
const _: () = assert!(core::mem::size_of::<GoWaitTotals>() == 16);

#[cfg(test)]
mod wait_word_protocol;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_is_claimed_once_a_period_and_never_right_after_the_last() {
        const PERIOD: u64 = 20_000_000;
        // The first pass.
        assert!(pass_claim(5 * PERIOD + 7, PERIOD, 0));
        // None again in its period, however far apart the ticks are.
        let first = 5 * PERIOD + 7;
        assert!(!pass_claim(5 * PERIOD + 9_000_000, PERIOD, first));
        assert!(!pass_claim(5 * PERIOD + 15_000_000, PERIOD, first));
        assert!(pass_claim(6 * PERIOD + 7, PERIOD, first));
        // The CPUs tick at the boundary: the tick just before it made period 6's pass; the
        // other CPU's, 30 µs later, in period 7, makes none.
        let last = 7 * PERIOD - 10_000;
        assert!(!pass_claim(7 * PERIOD + 20_000, PERIOD, last));
        // The next pair of ticks makes period 7's pass, a period on.
        assert!(pass_claim(8 * PERIOD - 10_000, PERIOD, last));
        // A longer period, set by userspace: the last pass numbered in it too.
        assert!(!pass_claim(8 * PERIOD + 20_000, 2 * PERIOD, 8 * PERIOD - 10_000));
        assert!(pass_claim(10 * PERIOD, 2 * PERIOD, 8 * PERIOD - 10_000));
        // No period: no pass.
        assert!(!pass_claim(9 * PERIOD, 0, 0));
    }

    #[test]
    fn pass_ids_differ_within_a_drain() {
        let t = 1_000_000_000_000;
        assert_ne!(pass_id(t), pass_id(t + 20_000_000));
        assert_ne!(pass_id(t), pass_id(t + 1));
    }

    fn classify(nr: i64, args: [u64; 6]) -> Option<(WaitKind, u64)> {
        classify_syscall(nr, |n| Ok::<_, ()>(args[n])).unwrap()
    }

    fn span(ip: u64, len: u32) -> StackSpan {
        StackSpan { ip, sp: 0x7ff0_0000, bp: 0x7ff0_0100, len, _pad: 0 }
    }

    #[test]
    fn span_samples_come_often_at_first_then_one_in_a_thousand_and_twenty_four() {
        let samples = (1..=5000).filter(|&n| is_span_sample(n));
        let expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3072, 4096];
        assert!(samples.eq(expected), "the sampled whole copies");
    }

    #[test]
    fn a_thread_keeps_a_span_per_place_it_sleeps_at() {
        let spans = ThreadSpans::default().with(span(1, 512)).with(span(2, 1024));
        assert_eq!(spans.copy_len(1, 0x7ff0_0000, 0x7ff0_0100), 512);
        assert_eq!(spans.copy_len(2, 0x7ff0_0000, 0x7ff0_0100), 1024);
        // Other registers at a known ip: not that place.
        assert_eq!(spans.copy_len(1, 0x7ff0_0040, 0x7ff0_0100), STACK_COPY_BYTES as u32);
        // Learned again, a place keeps its rank; the most recent is first.
        let spans = spans.with(span(1, 1536));
        assert_eq!(spans.sites[..2], [span(2, 1024), span(1, 1536)]);
        // An unused site (length 0) matches no registers, not even zeros.
        assert_eq!(ThreadSpans::default().site(0, 0, 0), None);
    }

    #[test]
    fn a_new_place_drops_the_least_recently_learned_and_forgetting_closes_the_gap() {
        let mut spans = ThreadSpans::default();
        for ip in 1..=STACK_SPAN_SITES as u64 + 1 {
            spans = spans.with(span(ip, 512));
        }
        assert_eq!(spans.site(1, 0x7ff0_0000, 0x7ff0_0100), None, "the first learned is dropped");
        assert_eq!(spans.sites[0].ip, STACK_SPAN_SITES as u64 + 1);
        let forgotten = spans.without(0);
        assert_eq!(forgotten.sites[0].ip, STACK_SPAN_SITES as u64);
        assert_eq!(forgotten.sites[STACK_SPAN_SITES - 1], StackSpan::default());
        let empty = (0..STACK_SPAN_SITES).fold(spans, |spans, _| spans.without(0));
        assert!(empty.is_empty() && !spans.is_empty());
    }

    #[test]
    fn futex_waits_and_locks_are_waits_but_wakes_are_not() {
        const PRIVATE: u64 = 128;
        const CLOCK_REALTIME: u64 = 256;
        let futex = |op| classify(syscall_nr::FUTEX, [0x1000, op, 0, 0, 0, 0]);
        assert_eq!(futex(0), Some((WaitKind::Futex, 0x1000)));
        assert_eq!(futex(9 | PRIVATE), Some((WaitKind::Futex, 0x1000)));
        assert_eq!(futex(9 | PRIVATE | CLOCK_REALTIME), Some((WaitKind::Futex, 0x1000)));
        assert_eq!(futex(6), Some((WaitKind::Futex, 0x1000)));
        assert_eq!(futex(13 | PRIVATE), Some((WaitKind::Futex, 0x1000)));
        assert_eq!(futex(11), Some((WaitKind::Futex, 0x1000)));
        assert_eq!(futex(1 | PRIVATE), None); // FUTEX_WAKE
        assert_eq!(futex(10), None); // FUTEX_WAKE_BITSET
        assert_eq!(futex(3), None); // FUTEX_CMP_REQUEUE
        assert_eq!(futex(8), None); // FUTEX_TRYLOCK_PI never blocks
    }

    #[test]
    fn wake_operations_are_told_from_waits() {
        const PRIVATE: u64 = 128;
        assert!(is_futex_wake(1 | PRIVATE)); // FUTEX_WAKE
        assert!(is_futex_wake(10)); // FUTEX_WAKE_BITSET
        assert!(is_futex_wake(4 | PRIVATE)); // FUTEX_CMP_REQUEUE
        assert!(is_futex_wake(7)); // FUTEX_UNLOCK_PI
        assert!(!is_futex_wake(0)); // FUTEX_WAIT
        assert!(!is_futex_wake(9 | PRIVATE)); // FUTEX_WAIT_BITSET
        assert!(!is_futex_wake(6)); // FUTEX_LOCK_PI
    }

    #[test]
    fn a_sleep_keeps_no_copy_only_after_a_run_of_short_waits() {
        // A thread never seen, or whose last wait was long: a copy.
        assert!(ShortRun::keeps_copy(0));
        assert!(ShortRun::keeps_copy(ShortRun::after(ShortRun::SKIP_COPY_AFTER, true)));
        let mut run = 0;
        for short_waits in 1..=ShortRun::SKIP_COPY_AFTER + 2 {
            run = ShortRun::after(run, false);
            assert_eq!(ShortRun::keeps_copy(run), short_waits < ShortRun::SKIP_COPY_AFTER);
        }
        // Saturated, one long wait brings the copies back.
        assert_eq!(run, ShortRun::SKIP_COPY_AFTER);
        assert!(ShortRun::keeps_copy(ShortRun::after(run, true)));
    }

    #[test]
    fn a_wait_slot_word_is_read_back_only_by_its_own_thread() {
        const PID_MAX_LIMIT: u32 = 1 << 22;
        let start_ns = 123_456_789_012_345;
        let kind = WaitKind::Poll as u32;
        for tid in [1, 4242, WAIT_START_SLOTS - 1, WAIT_START_SLOTS + 4242, PID_MAX_LIMIT - 1] {
            for sample in [false, true] {
                let word = WaitSlot::in_progress_word(tid, kind, start_ns, sample);
                let WaitSlot::InProgress { kind: read_kind, span_sample, .. } =
                    WaitSlot::read(word, tid)
                else {
                    panic!("tid {tid}: {:?}", WaitSlot::read(word, tid));
                };
                assert_eq!((read_kind, span_sample), (kind, sample), "tid {tid}");
            }
            let word = WaitSlot::in_progress_word(tid, kind, start_ns, false);
            let WaitSlot::InProgress { start, .. } = WaitSlot::read(word, tid) else {
                panic!("tid {tid}: {:?}", WaitSlot::read(word, tid));
            };
            assert_eq!(WaitSlot::elapsed_ns(start, start_ns), 0, "tid {tid}");
            assert_eq!(WaitSlot::elapsed_ns(start, start_ns + 1_500), 1_500, "tid {tid}");
            assert_eq!(WaitSlot::read(WaitSlot::ended_word(tid), tid), WaitSlot::Ended);
        }
        // Threads that share a slot (ids equal modulo the slot count) differ by their tag.
        let sharing = [4242, 4242 + WAIT_START_SLOTS, 4242 + 63 * WAIT_START_SLOTS];
        for writer in sharing {
            for reader in sharing.iter().filter(|&&reader| reader != writer) {
                let word = WaitSlot::in_progress_word(writer, kind, start_ns, true);
                assert_eq!(WaitSlot::read(word, *reader), WaitSlot::Unknown);
                assert_eq!(
                    WaitSlot::read(WaitSlot::ended_word(writer), *reader),
                    WaitSlot::Unknown
                );
            }
        }
        // A slot never written is no thread's.
        for tid in sharing {
            assert_eq!(WaitSlot::read(0, tid), WaitSlot::Unknown);
        }
    }

    #[test]
    fn the_switch_clock_keeps_the_least_measure_of_two_windows() {
        const W: u64 = SwitchClock::WINDOW_NS;
        let mut clock = SwitchClock::default();
        assert_eq!(clock.measured, 0);
        // A negative offset (the run queues' clock ahead), then smaller delays over it.
        let offset = (-13_000_000i64) as u64;
        let at = |delay: u64| offset.wrapping_add(delay);
        clock.measure(1_000, at(20_000));
        assert_eq!((clock.measured, clock.offset), (1, at(20_000)));
        clock.measure(2_000, at(300));
        clock.measure(3_000, at(45_000));
        assert_eq!(clock.offset, at(300), "the least so far, at once");
        // The next window's measures are all later; its own least shows only once the
        // window with the lower one has passed (the monotonic clock drifted ahead).
        clock.measure(1_000 + W, at(2_000));
        clock.measure(1_500 + W, at(900));
        assert_eq!(clock.offset, at(300));
        clock.measure(2_000 + 2 * W, at(5_000));
        assert_eq!(clock.offset, at(900));
        clock.measure(3_000 + 3 * W, at(7_000));
        assert_eq!(clock.offset, at(5_000));
    }

    #[test]
    fn a_wait_slot_times_waits_across_the_wrap_of_its_clock_bits() {
        // A wait begun just before the start bits wrap (every 2^51 ns) and ended after.
        let start_ns = (1u64 << 51) * 3 - 400;
        let word = WaitSlot::in_progress_word(7, WaitKind::Futex as u32, start_ns, true);
        let WaitSlot::InProgress { start, kind, .. } = WaitSlot::read(word, 7) else {
            panic!("{:?}", WaitSlot::read(word, 7));
        };
        assert_eq!(kind, WaitKind::Futex as u32);
        assert_eq!(WaitSlot::elapsed_ns(start, start_ns + 1_000), 1_000);
        assert_eq!(WaitSlot::elapsed_ns(start, start_ns), 0);
        assert_eq!(WaitSlot::elapsed_ns(start, start_ns + 1), 1);
        // A reading a little before the start (the switch's clock and the wake's differ
        // by their calibration) is no time, not nearly 2^51 ns; a wait of 13 days is.
        assert_eq!(WaitSlot::elapsed_ns(start, start_ns - 300), 0);
        let days_13 = 13 * 86_400 * 1_000_000_000;
        assert_eq!(WaitSlot::elapsed_ns(start, start_ns + days_13), days_13);
        // The whole start, from readings after it, at it and before it (where the time
        // so far is 0 but the start is still the one the sleep keyed its copy by).
        for now_ns in [start_ns + 1_000, start_ns, start_ns - 300, start_ns + days_13] {
            assert_eq!(WaitSlot::start_ns(start, now_ns), start_ns, "now {now_ns}");
        }
        let verdict = WaitSlot::read(word, 7).judge(1_000_000, || start_ns - 300);
        assert_eq!(
            verdict,
            WordVerdict::Short {
                kind: WaitKind::Futex as u32,
                start_ns,
                elapsed_ns: 0,
                span_sample: true
            }
        );
        // Every kind fits its bits.
        for kind in WaitKind::ALL {
            let word = WaitSlot::in_progress_word(7, kind as u32, start_ns, false);
            assert!(
                matches!(WaitSlot::read(word, 7), WaitSlot::InProgress { kind: k, .. } if k == kind as u32)
            );
        }
    }

    #[test]
    fn go_counters_are_listed_in_index_order() {
        for (index, counter) in GoCounter::ALL.into_iter().enumerate() {
            assert_eq!(counter as usize, index);
        }
    }

    #[test]
    fn socket_calls_carry_their_descriptor() {
        let args = [7, 0, 0, 0, 0, 0];
        assert_eq!(classify(syscall_nr::SENDTO, args), Some((WaitKind::Send, 7)));
        assert_eq!(classify(syscall_nr::RECVMMSG, args), Some((WaitKind::Recv, 7)));
        assert_eq!(classify(syscall_nr::ACCEPT4, args), Some((WaitKind::Accept, 7)));
        assert_eq!(classify(syscall_nr::CONNECT, args), Some((WaitKind::Connect, 7)));
        assert_eq!(classify(syscall_nr::READ, args), Some((WaitKind::Read, 7)));
        assert_eq!(classify(syscall_nr::EPOLL_PWAIT2, args), Some((WaitKind::Poll, 0)));
        assert_eq!(classify(35, args), None); // nanosleep is not a wait we watch
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid, explicit padding.
    unsafe impl aya::Pod for super::InFlightWait {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SleepStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThreadSpans {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ShortWaitTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoPark {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoWaitKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoWaitTotals {}
    unsafe impl aya::Pod for super::PassLook {}
}
