//! The call-site policy: which frame of a stack a reader looks for, per language. The
//! runtime (libc, a language's standard library and scheduler) is skipped.

use crate::stacks::Frame;

/// The innermost frame of `frames` (root first) in the program's own code: not libc,
/// not the language's standard library or runtime. Falls back to the innermost named
/// frame.
pub fn call_site(frames: &[Frame]) -> &str {
    let innermost_own = frames
        .iter()
        .rev()
        .find(|frame| frame.module_is_main && !is_runtime_function(&frame.name));
    innermost_own
        .or_else(|| frames.iter().rev().find(|frame| frame.name != UNKNOWN))
        .map_or(UNKNOWN, |frame| frame.name.as_str())
}

const UNKNOWN: &str = "[unknown]";

/// Functions of Rust's std/core/alloc, of Go's runtime and of the C runtime's start-up
/// code, which a statically linked program carries in its own executable.
fn is_runtime_function(name: &str) -> bool {
    const RUNTIME_PREFIXES: [&str; 16] = [
        "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::", "__rust", "rust_panic",
        "rust_begin_unwind", "_start", "__libc_", "start_thread", "[",
        // Go's runtime, its internal packages and sync, which a Go executable carries.
        "runtime.", "internal/", "sync.",
    ];
    // `<T as core::ops::FnOnce>::call_once` style names are the runtime too.
    RUNTIME_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || name.starts_with('<') && name.contains(" as core::ops::function::")
}

