//! The data model every source of waits feeds and every exporter reads: waits
//! aggregated by raw stack as they arrive (`aggregate`), named once (`symbolize`), into the
//! `Profile` (`profile`), with the call-site policy per language (`call_site`).

mod aggregate;
mod backed_up;
pub mod call_site;
mod modules;
mod profile;
mod stats;
mod symbolize;
#[cfg(test)]
pub(crate) mod tests;
pub mod timeline;

use tracer_common::WaitKind;

use crate::objects::pipe_inode;

pub use aggregate::{StackKey, WaitAggregate, WaitObject, WakerStats};
pub use backed_up::{BACKED_UP_KEPT, BackedUp, BackedUpSocket, Backlog};
pub use modules::module_infos;
pub use profile::{
    MIXED_WAITERS, ModuleInfo, ProcessTag, Profile, ProfileKind, ProfileStack, PythonInfo,
    Sampling, ThreadCounts, TraceCounts, container_id, counted, waiters_of,
};
pub use stats::{WaitStats, log2_bucket};
pub use timeline::{Timeline, TimelineRecorder};

/// The Go wait reason of a goroutine parked on a descriptor; its object is this reason,
/// a space and the endpoint (`IO wait 10.0.0.5:80`).
pub const GO_IO_WAIT: &str = "IO wait";

/// What a goroutine in a system call is shown waiting in (as Go's tracebacks say); its
/// object is this, the call and what it is on (`syscall write on pipe:[4711]`).
pub const GO_SYSCALL: &str = "syscall";

/// A thread's wait on a socket (a `read`/`write` counts once its descriptor is one).
pub fn is_socket_kind(kind: WaitKind) -> bool {
    matches!(
        kind,
        WaitKind::Send
            | WaitKind::Recv
            | WaitKind::Connect
            | WaitKind::Accept
            | WaitKind::Read
            | WaitKind::Write
    )
}

/// What an asyncio task awaiting a socket names before its endpoint (`recv 10.0.0.5:80`).
const TASK_SOCKET_VERBS: [&str; 4] = ["recv ", "send ", "accept ", "connect "];

/// The endpoint a wait of `kind` on `object` waits on, if it is a socket's or a pipe's: a
/// thread's socket wait names it alone, a goroutine's and an asyncio task's after what
/// they do (`IO wait 10.0.0.5:80`, `syscall write on pipe:[4711]`, `recv 10.0.0.5:80`).
pub fn endpoint_in_object(kind: WaitKind, object: &str) -> Option<&str> {
    match kind {
        kind if is_socket_kind(kind) => Some(object),
        WaitKind::Goroutine => match object.strip_prefix(GO_IO_WAIT) {
            Some(endpoint) => endpoint.strip_prefix(' '),
            None => go_syscall_in_object(object)?.1.filter(|on| pipe_inode(on).is_some()),
        },
        WaitKind::Task => TASK_SOCKET_VERBS.iter().find_map(|verb| object.strip_prefix(verb)),
        _ => None,
    }
}

/// The call of a goroutine in a system call, out of its object, and what it is on
/// (`write` and `pipe:[4711]` of `syscall write on pipe:[4711]`).
pub fn go_syscall_in_object(object: &str) -> Option<(&str, Option<&str>)> {
    let call = object.strip_prefix(GO_SYSCALL)?.strip_prefix(' ')?;
    Some(match call.split_once(" on ") {
        Some((call, on)) => (call, Some(on)),
        None => (call, None),
    })
}

/// What a goroutine's wait is, out of its object: the Go wait reason before what it
/// names (`chan send` of `chan send on chan int 0/0`, `IO wait` of `IO wait 10.0.0.5:80`,
/// `syscall write` of `syscall write on pipe:[4711]`); no reason has " on " in it.
pub fn go_wait_reason(object: &str) -> &str {
    if object.starts_with(GO_IO_WAIT) {
        return GO_IO_WAIT;
    }
    object.split_once(" on ").map_or(object, |(reason, _)| reason)
}
pub use symbolize::{UNRESOLVED_SOCKET, WakerRow};
