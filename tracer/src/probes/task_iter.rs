//! A task iterator link over the threads of one process (`bpf_iter_link_info.task.pid`,
//! Linux 6.1): aya's `Iter::attach` makes a link over every task on the host, and a
//! sampled recording that walks the host's tasks each time a wait is new pays for
//! everyone's threads. Two bpf(2) commands aya does not offer, made here.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr`'s `link_create` for an iterator (include/uapi/linux/bpf.h).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    /// The struct's tail padding, which the kernel requires to be zero.
    _pad: u32,
}

/// `union bpf_iter_link_info`'s `task` member; the union is 16 bytes.
#[repr(C)]
struct TaskIterInfo {
    tid: u32,
    pid: u32,
    pid_fd: u32,
    _pad: u32,
}

/// `union bpf_attr`'s `iter_create`.
#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// Links the loaded task iterator `program` to the threads of process `pid` only.
/// Fails on kernels before 6.1, which know no task filter (E2BIG or EINVAL).
pub fn link_to_process(program: BorrowedFd<'_>, pid: u32) -> io::Result<OwnedFd> {
    let info = TaskIterInfo { tid: 0, pid, pid_fd: 0, _pad: 0 };
    let attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info: &info as *const TaskIterInfo as u64,
        iter_info_len: std::mem::size_of::<TaskIterInfo>() as u32,
        _pad: 0,
    };
    // SAFETY: `attr` is a link_create attribute of the size passed, and `info`, which it
    // points to, lives across the call; the kernel only reads both.
    let fd = unsafe {
        bpf(BPF_LINK_CREATE, (&attr as *const LinkCreateAttr).cast(), size_of_val(&attr))
    }?;
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A fresh pass of the iterator behind `link`, to read to its end.
pub fn start_pass(link: &OwnedFd) -> io::Result<File> {
    let attr = IterCreateAttr { link_fd: link.as_raw_fd() as u32, flags: 0 };
    // SAFETY: `attr` is an iter_create attribute of the size passed, read by the kernel.
    let fd = unsafe {
        bpf(BPF_ITER_CREATE, (&attr as *const IterCreateAttr).cast(), size_of_val(&attr))
    }?;
    // SAFETY: as above, a new descriptor of ours alone.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// bpf(2); the caller vouches that `attr` points to `size` readable bytes laid out as
/// the command expects.
unsafe fn bpf(command: libc::c_long, attr: *const u8, size: usize) -> io::Result<i32> {
    // SAFETY: per the caller.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr, size) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(fd as i32) }
}
