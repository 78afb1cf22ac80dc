//! Real-process tests: unwind and symbolize this test's own stack, and a child that exits.

use std::arch::asm;
use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt as _;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use object::{Object as _, ObjectSymbol as _};

use super::process_image::Module;
use super::*;

/// Stack size of the thread the captured chain runs in: roomy for the test's frames, and
/// known, so the copy can be capped at its end.
const CAPTURE_THREAD_STACK: usize = 256 * 1024;

/// What the kernel side copies per wait.
const STACK_COPY_LEN: usize = 16 * 1024;

/// A copy too short to hold even the leaf's frame.
const TRUNCATED_COPY_LEN: usize = 64;

/// x86_64 syscall number of clock_nanosleep, where `sleep` waits.
const SYS_CLOCK_NANOSLEEP: u64 = 230;

/// How long a child gets to reach its wait before the test gives up.
const CHILD_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

struct Captured {
    regs: UserRegs,
    stack: Vec<u8>,
}

#[inline(never)]
fn outer_fn() -> Captured {
    // black_box after the call keeps it a real call (no tail call), so the frame stays.
    black_box(middle_fn())
}

#[inline(never)]
fn middle_fn() -> Captured {
    black_box(capture_fn())
}

#[inline(never)]
fn capture_fn() -> Captured {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: copies rip, rsp and rbp into three output registers; no memory, stack or flags
    // are touched.
    unsafe {
        asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let left_on_stack = usize::try_from(own_stack_end() - sp).expect("stack fits usize");
    let stack = read_memory(std::process::id(), sp, STACK_COPY_LEN.min(left_on_stack));
    black_box(Captured { regs: UserRegs { ip, sp, bp }, stack })
}

/// The highest address of the calling thread's stack.
fn own_stack_end() -> u64 {
    // SAFETY: pthread_attr_t is plain data that pthread_getattr_np fully initializes.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    // SAFETY: `attr` is a valid, writable attribute object for the calling thread.
    let rc = unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) };
    assert_eq!(rc, 0, "pthread_getattr_np");
    let mut low: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` was initialized above; the outputs are valid pointers to locals.
    let rc = unsafe { libc::pthread_attr_getstack(&attr, &mut low, &mut size) };
    // SAFETY: `attr` was initialized by pthread_getattr_np and is not used afterwards.
    unsafe { libc::pthread_attr_destroy(&mut attr) };
    assert_eq!(rc, 0, "pthread_attr_getstack");
    low as u64 + size as u64
}

/// Up to `len` bytes at `addr` of `pid`, as the kernel's bpf_probe_read_user would copy them
/// (fewer if the mapping ends first).
fn read_memory(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    let mem = File::open(format!("/proc/{pid}/mem"))
        .unwrap_or_else(|e| panic!("open /proc/{pid}/mem: {e}"));
    let mut bytes = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match mem.read_at(&mut bytes[filled..], addr + filled as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    bytes.truncate(filled);
    bytes
}

fn position(frames: &[Frame], what: &str) -> usize {
    frames
        .iter()
        .position(|frame| frame.name.contains(what))
        .unwrap_or_else(|| panic!("no frame named like {what:?} in {:#?}", names(frames)))
}

fn names(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(|frame| format!("{} ({})", frame.name, frame.module)).collect()
}

/// A stack captured in `capture_fn` on a thread of this test process, and the process's
/// memory map after it.
fn capture_own_stack() -> (Captured, ProcessImage) {
    let captured = std::thread::Builder::new()
        .stack_size(CAPTURE_THREAD_STACK)
        .spawn(outer_fn)
        .expect("spawn capture thread")
        .join()
        .expect("capture thread panicked");
    let image =
        ProcessImage::snapshot(std::process::id()).unwrap_or_else(|e| panic!("snapshot self: {e}"));
    (captured, image)
}

/// What the probes' part copies rest on (`probes::stack_spans`): a copy cut where the
/// walk's reads ended walks the same way; cut one word shorter, it runs out.
#[test]
fn a_copy_of_the_bytes_a_walk_read_walks_the_same_way() {
    let (captured, image) = capture_own_stack();
    let mut unwinder = StackUnwinder::new(&image);
    let whole = unwinder.unwind(captured.regs, &captured.stack);
    assert_eq!(whole.end, UnwindEnd::Complete);
    let read = whole.read_bytes as usize;
    assert!(read > 0 && read < captured.stack.len(), "read {read} of {}", captured.stack.len());

    let part = unwinder.unwind(captured.regs, &captured.stack[..read]);
    assert_eq!((&part.frames, part.end), (&whole.frames, UnwindEnd::Complete));
    assert_eq!(part.read_bytes, whole.read_bytes);
    let short = unwinder.unwind(captured.regs, &captured.stack[..read - 8]);
    assert_eq!(short.end, UnwindEnd::StackCopyExhausted, "{:x?}", short.frames);
}

#[test]
fn unwinds_own_stack_through_std_thread_start() {
    let (captured, image) = capture_own_stack();
    let main_module = image.module_for(captured.regs.ip).expect("the captured ip is in a module");
    assert!(main_module.is_main_executable, "ip in {:?}", main_module.path);

    let mut unwinder = StackUnwinder::new(&image);
    let unwound = unwinder.unwind(captured.regs, &captured.stack);
    let mut symbolizer = StackSymbolizer::new();
    let frames = symbolizer.symbolize(&image, &unwound.frames);

    let capture = position(&frames, "capture_fn");
    let middle = position(&frames, "middle_fn");
    let outer = position(&frames, "outer_fn");
    assert_eq!(capture, 0, "leaf first: {:#?}", names(&frames));
    assert!(capture < middle && middle < outer, "{:#?}", names(&frames));
    // std (no frame pointers) starts the thread: reaching it proves CFI unwinding through std.
    let thread_start = position(&frames, "thread_start");
    assert!(outer < thread_start, "{:#?}", names(&frames));
    assert_eq!(
        unwound.end,
        UnwindEnd::Complete,
        "the walk ends at clone3's CFI: {:#?}",
        names(&frames)
    );
    let capture_frame = &frames[capture];
    assert!(capture_frame.module_is_main);
    // Line tables come with the test profile's debug info; a release build has none.
    assert!(
        !cfg!(debug_assertions)
            || capture_frame.file.as_deref().is_some_and(|file| file.ends_with("stacks/tests.rs")),
        "{capture_frame:?}"
    );

    let truncated = unwinder.unwind(captured.regs, &captured.stack[..TRUNCATED_COPY_LEN]);
    assert_eq!(truncated.end, UnwindEnd::StackCopyExhausted);
    assert_eq!(truncated.frames.first(), Some(&captured.regs.ip));
}

#[test]
fn a_remembered_walk_is_reused_only_for_the_same_stack_words() {
    let (captured, image) = capture_own_stack();
    let fresh = |stack: &[u8]| StackUnwinder::new(&image).unwind(captured.regs, stack);
    let mut unwinder = StackUnwinder::new(&image);

    let first = unwinder.unwind(captured.regs, &captured.stack);
    let again = unwinder.unwind(captured.regs, &captured.stack);
    assert!(first.frames.len() > 3, "{first:?}");
    assert_eq!((&again.frames, again.end), (&first.frames, first.end));

    // The same registers over a stack whose first return address is gone: the walk the
    // unwinder remembers read that word, so it must walk again and stop where it is null.
    let slot = captured
        .stack
        .chunks_exact(8)
        .position(|word| word == first.frames[1].to_le_bytes())
        .expect("the first return address is in the copy");
    let mut changed = captured.stack.clone();
    changed[slot * 8..slot * 8 + 8].fill(0);
    let walked_again = unwinder.unwind(captured.regs, &changed);
    let expected = fresh(&changed);
    assert_eq!((&walked_again.frames, walked_again.end), (&expected.frames, expected.end));
    assert!(walked_again.frames.len() < first.frames.len(), "{walked_again:?}");

    // And the original stack is walked as before.
    let back = unwinder.unwind(captured.regs, &captured.stack);
    assert_eq!((&back.frames, back.end), (&first.frames, first.end));
}

/// Kills and reaps the child on drop, so a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The (sp, pc) of a thread blocked in clock_nanosleep, from /proc/PID/syscall.
fn wait_in_clock_nanosleep(pid: u32) -> (u64, u64) {
    let deadline = Instant::now() + CHILD_SETTLE_TIMEOUT;
    loop {
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let fields: Vec<&str> = syscall.split_whitespace().collect();
        // "nr arg1 .. arg6 sp pc" while blocked in a syscall.
        if let [nr, .., sp, pc] = fields.as_slice()
            && fields.len() == 9
            && nr.parse() == Ok(SYS_CLOCK_NANOSLEEP)
        {
            let hex = |field: &str| {
                u64::from_str_radix(field.trim_start_matches("0x"), 16).expect("hex in syscall")
            };
            return (hex(sp), hex(pc));
        }
        assert!(Instant::now() < deadline, "sleep never blocked: {syscall:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_child_that_exited_still_unwinds_and_symbolizes() {
    let child =
        Command::new("sleep").arg("5").spawn().unwrap_or_else(|e| panic!("spawn sleep: {e}"));
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let (sp, pc) = wait_in_clock_nanosleep(pid);
    let stack = read_memory(pid, sp, STACK_COPY_LEN);
    let mut image = ProcessImage::snapshot(pid).unwrap_or_else(|e| panic!("snapshot sleep: {e}"));

    child.0.kill().expect("kill sleep");
    child.0.wait().expect("reap sleep");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists");
    assert_eq!(image.refresh().expect("refresh a gone process"), 0);

    let main = image.main_module().expect("sleep's executable is a module");
    assert_eq!(main.name(), "sleep");
    let libc = image
        .modules()
        .iter()
        .find(|module| module.name() == "libc.so.6")
        .expect("libc is a module");
    let libc_path = libc.path.clone();
    assert_eq!(
        image.module_for(pc).map(Module::name),
        Some("libc.so.6"),
        "sleep waits inside libc"
    );

    // An address inside clock_nanosleep, from libc's own dynamic symbol table.
    let elf = object::File::parse(libc.file_bytes()).expect("parse libc");
    let symbol = elf
        .dynamic_symbols()
        .find(|symbol| symbol.name() == Ok("clock_nanosleep"))
        .expect("libc exports clock_nanosleep");
    let inside_clock_nanosleep = libc.bias + symbol.address() + 1;
    assert_eq!(
        image.module_for(inside_clock_nanosleep).map(|module| &module.path),
        Some(&libc_path)
    );

    let mut symbolizer = StackSymbolizer::new();
    let frames = symbolizer.symbolize(&image, &[inside_clock_nanosleep]);
    assert!(
        frames[0].name.contains("clock_nanosleep") && frames[0].module == "libc.so.6",
        "{frames:#?}"
    );

    // The real wait: pc and stack read while it slept, unwound after it exited.
    let mut unwinder = StackUnwinder::new(&image);
    let regs = UserRegs { ip: pc, sp, bp: 0 };
    let unwound = unwinder.unwind(regs, &stack);
    let frames = symbolizer.symbolize(&image, &unwound.frames);
    assert!(frames[0].name.contains("clock_nanosleep"), "{:#?}", names(&frames));
    assert!(
        frames.iter().any(|frame| frame.module == "sleep"),
        "reaches sleep's own code: {:#?}",
        names(&frames)
    );
    assert_eq!(unwound.end, UnwindEnd::Complete, "the walk ends at _start: {:#?}", names(&frames));
}
