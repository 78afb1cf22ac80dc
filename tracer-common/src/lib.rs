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
}

/// Number of [`WaitKind`] variants (the size of per-kind arrays).
pub const WAIT_KIND_COUNT: usize = 8;

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
        }
    }
}

/// A wait in progress: one per thread that is inside a watched syscall, keyed by tid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InFlightWait {
    /// `bpf_ktime_get_ns` at syscall entry.
    pub start_ns: u64,
    /// What is waited on: the futex address, or the descriptor for socket calls.
    pub object: u64,
    /// A [`WaitKind`] discriminant.
    pub kind: u32,
    /// Non-zero once the thread was switched out asleep inside this call: only then
    /// is the call a wait (a call that returns at once is not).
    pub blocked: u32,
}

/// A wait over the threshold, sent through the ring buffer when it ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WaitRecord {
    /// Thread id (kernel pid) of the waiter.
    pub tid: u32,
    /// A [`WaitKind`] discriminant.
    pub kind: u32,
    /// `bpf_ktime_get_ns` at syscall entry.
    pub start_ns: u64,
    /// Time from syscall entry to exit, in nanoseconds.
    pub duration_ns: u64,
    /// The futex address, or the descriptor for socket calls.
    pub object: u64,
    /// The syscall's return value.
    pub ret: i64,
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
    /// Explicit padding.
    pub _pad: u32,
    /// The user stack copied from `sp`.
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
    /// Watched syscalls entered by the target's threads.
    CallsEntered = 0,
    /// Watched calls that returned without the thread going to sleep (not waits).
    ReturnedWithoutWaiting = 1,
    /// Waits under the threshold (counted per kind, no stack).
    ShortWaits = 2,
    /// Waits over the threshold, sent with a stack.
    LongWaits = 3,
    /// Long waits dropped because the ring buffer was full.
    RingBufferFull = 4,
    /// Long waits whose user stack could not be read at all.
    StackUnreadable = 5,
    /// Long waits whose stack copy was shorter than `STACK_COPY_BYTES`.
    StackShortened = 6,
    /// Calls not tracked because the in-flight map was full.
    InFlightMapFull = 7,
    /// Exits of calls whose entry was not seen (tracing began mid-call).
    ExitWithoutEntry = 8,
}

/// Number of [`Counter`] variants.
pub const COUNTER_COUNT: usize = 9;

/// Capacity of the per-thread in-flight map: threads of the target blocked at once.
pub const MAX_IN_FLIGHT: u32 = 65_536;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid, explicit padding.
    unsafe impl aya::Pod for super::InFlightWait {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ShortWaitTotals {}
}
