//! Holds an empty BPF program (`r0 = 0; exit`) on each raw tracepoint named on the command
//! line until SIGINT or SIGTERM: what the kernel charges for running a program there at
//! all, whatever the program does. The bench runs it beside the tools so that a tool's
//! cost splits into the kernel's part, fixed by where it attaches, and its own code's.
//!
//! Usage: `empty-probes TRACEPOINT...` (e.g. `sched_switch sched_wakeup`); prints
//! `attached` once every program is attached and `detached` when it ends.

use std::{ffi::CString, process::ExitCode};

#[path = "stop_signals.rs"]
mod stop_signals;

use stop_signals::block_stop_signals;

// include/uapi/linux/bpf.h
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
/// `mov64 r0, 0` (BPF_ALU64 | BPF_MOV | BPF_K) and `exit` (BPF_JMP | BPF_EXIT), each an
/// 8-byte `struct bpf_insn` with no registers, offset or immediate.
const EMPTY_PROGRAM: [u64; 2] = [0xb7, 0x95];

/// `union bpf_attr`, as large as any command here reads; zeroed but for the fields set.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn set_u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn set_u64(&mut self, offset: usize, value: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
}

/// bpf(2); the new descriptor.
fn bpf(command: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zero-filled bpf_attr of the size passed, whose pointer fields
    // point to memory that outlives the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, command, attr.0.as_mut_ptr(), attr.0.len() as libc::c_uint)
    };
    if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(fd as i32) }
}

/// Loads an empty raw-tracepoint program and attaches it to `tracepoint`; its descriptors
/// (the program's and the attachment's) stay open until the process ends.
fn attach_empty(tracepoint: &str) -> Result<(), String> {
    let license = CString::from(c"GPL");
    let mut load = BpfAttr::new();
    load.set_u32(0, BPF_PROG_TYPE_RAW_TRACEPOINT)
        .set_u32(4, EMPTY_PROGRAM.len() as u32)
        .set_u64(8, EMPTY_PROGRAM.as_ptr() as u64)
        .set_u64(16, license.as_ptr() as u64);
    let program = bpf(BPF_PROG_LOAD, &mut load).map_err(|err| format!("load: {err}"))?;
    let name = CString::new(tracepoint).map_err(|_| "a NUL in the name".to_string())?;
    let mut open = BpfAttr::new();
    open.set_u64(0, name.as_ptr() as u64).set_u32(8, program as u32);
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut open).map_err(|err| format!("attach: {err}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let stop_signals = block_stop_signals();
    let tracepoints: Vec<String> = std::env::args().skip(1).collect();
    if tracepoints.is_empty() {
        eprintln!("usage: empty-probes TRACEPOINT...");
        return ExitCode::from(2);
    }
    for tracepoint in &tracepoints {
        if let Err(err) = attach_empty(tracepoint) {
            eprintln!("empty-probes: {tracepoint}: {err}");
            return ExitCode::FAILURE;
        }
    }
    println!("attached");
    let mut signal = 0;
    // SAFETY: a set of blocked signals, as `block_stop_signals` made it.
    unsafe { libc::sigwait(&stop_signals, &mut signal) };
    println!("detached");
    ExitCode::SUCCESS
}
