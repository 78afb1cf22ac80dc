//! `/debug/pprof/goroutine` of a Go program, in the formats of Go's own `net/http/pprof`
//! (`runtime/pprof.writeGoroutine`): `debug=0` pprof (written by `report::pprof`),
//! `debug=1` the count profile as text (`printCountProfile`: `goroutine profile: total N`,
//! then `N @ 0x… 0x…` and a `#\t0x…\tfunc+0x…\tfile:line` line per frame, through Go's
//! tabwriter), `debug=2` one entry per goroutine as Go's traceback prints it
//! (`goroutine ID [wait reason, N minutes]:` then `func(...)` / `\tfile:line +0x…`).
//!
//! Read from outside, so not quite Go's: only the goroutines waiting when read are there
//! (running, runnable and in-syscall ones have moving stacks and are not unwound); the
//! `@` line has one address per physical frame, where Go gives an inlined call one of its
//! own; the stacks stop before `runtime.goexit`; arguments are not read (every frame
//! prints `(...)`, as Go prints an inlined one); there is no `locked to thread`.

use std::fmt::Write as _;

use crate::{
    golang::{DumpedGoroutine, GoroutineDump, GoroutineGroup},
    model::ProfileStack,
    stacks::Frame,
};

/// The most text of one `debug=2` answer: Go's `writeGoroutineStacks` stops there too.
const MAX_TRACEBACK_BYTES: usize = 64 << 20;

/// `text/tabwriter` settings of `printCountProfile`: `NewWriter(w, 1, 8, 1, '\t', 0)`.
const TAB_MIN_WIDTH: usize = 1;
const TAB_WIDTH: usize = 8;
const TAB_PADDING: usize = 1;

/// `debug=1`: the groups, most goroutines first, as `printCountProfile` prints them.
pub fn count_text(dump: &GoroutineDump) -> String {
    let mut text = format!("goroutine profile: total {}\n", dump.goroutines());
    for (stack, group) in dump.iter() {
        let _ = write!(text, "{} @", group.goroutines.len());
        for pc in &group.pcs {
            let _ = write!(text, " {:#x}", pc.pc);
        }
        text.push('\n');
        let leaf_first = frames_leaf_first(stack, group);
        let mut record = stack_record(&leaf_first, false);
        if record.is_empty() {
            // Nothing outside the runtime: print it all (as Go does).
            record = stack_record(&leaf_first, true);
        }
        text.push_str(&record);
        text.push('\n');
    }
    tabwriter(&text)
}

/// `printStackRecord`: a `#` line per frame, leaf first, leaving out `runtime.goexit`
/// and, unless `all_frames`, the runtime's frames before the first other one.
fn stack_record(frames: &[(&Frame, Option<u64>)], all_frames: bool) -> String {
    let mut show = all_frames;
    let mut text = String::new();
    for &(frame, entry) in frames {
        // What Go's `runtime.Frame.PC` holds for a return address: the call's last byte.
        let pc = frame.address.wrapping_sub(1);
        match entry {
            None => {
                show = true;
                let _ = writeln!(text, "#\t{pc:#x}");
            }
            Some(entry) if frame.name != "runtime.goexit" && (show || !is_runtime(&frame.name)) => {
                show = true;
                let _ = writeln!(
                    text,
                    "#\t{pc:#x}\t{}+{:#x}\t{}:{}",
                    printable(&frame.name),
                    pc.wrapping_sub(entry),
                    printable(frame.file.as_deref().unwrap_or("?")),
                    frame.line.unwrap_or(0)
                );
            }
            Some(_) => {}
        }
    }
    if show { text } else { String::new() }
}

/// `debug=2`: an entry per goroutine, by id, as `runtime.Stack(buf, true)` prints them
/// (blank lines between), at most `MAX_TRACEBACK_BYTES`.
pub fn traceback_text(dump: &GoroutineDump) -> String {
    // The frames of a group are printed once for all its goroutines.
    let bodies: Vec<String> = dump.iter().map(|(stack, group)| traceback(stack, group)).collect();
    let mut goroutines: Vec<(&DumpedGoroutine, usize)> = dump
        .groups
        .iter()
        .enumerate()
        .flat_map(|(index, group)| group.goroutines.iter().map(move |goroutine| (goroutine, index)))
        .collect();
    goroutines.sort_unstable_by_key(|&(goroutine, _)| goroutine.id);
    let mut text = String::new();
    for (shown, &(goroutine, index)) in goroutines.iter().enumerate() {
        let mut entry = String::new();
        if shown > 0 {
            entry.push('\n');
        }
        let id = goroutine.id;
        let _ = write!(entry, "goroutine {id} [{}", printable(&dump.groups[index].wait_reason));
        // Go prints the minutes from `waitsince` only when there are some.
        let minutes = goroutine.waiting.map_or(0, |waiting| waiting.as_secs() / 60);
        if minutes >= 1 {
            let _ = write!(entry, ", {minutes} minutes");
        }
        entry.push_str("]:\n");
        entry.push_str(&bodies[index]);
        write_created_by(&mut entry, goroutine);
        if text.len() + entry.len() > MAX_TRACEBACK_BYTES {
            let _ = write!(
                text,
                "\n...{} more goroutines not shown: the dump stops at {} MiB, as Go's does\n",
                goroutines.len() - shown,
                MAX_TRACEBACK_BYTES >> 20
            );
            break;
        }
        text.push_str(&entry);
    }
    text
}

/// `printcreatedby`: the function and line of the `go` statement that created the
/// goroutine, and (Go 1.21+) the goroutine that ran it; not for the main goroutine, nor
/// one the runtime's own code created.
fn write_created_by(entry: &mut String, goroutine: &DumpedGoroutine) {
    let Some(created) = &goroutine.created_by else { return };
    if goroutine.id == 1 || !shown_in_traceback(&created.function, false) {
        return;
    }
    let _ = write!(entry, "created by {}", printable(&created.function));
    if goroutine.parent_id != 0 {
        let _ = write!(entry, " in goroutine {}", goroutine.parent_id);
    }
    let file = created.file.as_deref().unwrap_or("?");
    let _ = write!(entry, "\n\t{}:{}", printable(file), created.line.unwrap_or(0));
    if let Some(offset) = created.offset {
        let _ = write!(entry, " +{offset:#x}");
    }
    entry.push('\n');
}

/// The frames of one goroutine of `group` as Go's traceback prints them at its default
/// level: leaf first, only functions outside package runtime (and exported runtime ones),
/// all of them if that leaves none.
fn traceback(stack: &ProfileStack, group: &GoroutineGroup) -> String {
    let frames = frames_leaf_first(stack, group);
    let mut text = traceback_frames(&frames, false);
    if text.is_empty() {
        text = traceback_frames(&frames, true);
    }
    if stack.truncated {
        text.push_str("...additional frames elided...\n");
    }
    text
}

fn traceback_frames(frames: &[(&Frame, Option<u64>)], all_frames: bool) -> String {
    let mut text = String::new();
    for (index, &(frame, entry)) in frames.iter().enumerate() {
        if !all_frames && entry.is_some() && !shown_in_traceback(&frame.name, index == 0) {
            continue;
        }
        let name = if frame.name == "runtime.gopanic" { "panic" } else { &frame.name };
        let _ = write!(text, "{}(...)\n\t", printable(name));
        match (entry, &frame.file) {
            (Some(entry), Some(file)) => {
                let _ = write!(text, "{}:{}", printable(file), frame.line.unwrap_or(0));
                // An inlined call has no offset of its own; the function's is from its entry
                // to the return address.
                if !frame.inlined && frame.address > entry {
                    let _ = write!(text, " +{:#x}", frame.address - entry);
                }
            }
            _ => {
                let _ = write!(text, "?:0 pc={:#x}", frame.address);
            }
        }
        text.push('\n');
    }
    text
}

/// `runtime.showfuncinfo` at traceback level 1: a function with a package, outside
/// package runtime unless exported; `runtime.gopanic` below the leaf.
fn shown_in_traceback(name: &str, leaf: bool) -> bool {
    if name == "runtime.gopanic" && !leaf {
        return true;
    }
    let exported_runtime = name
        .strip_prefix("runtime.")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|first| first.is_ascii_uppercase());
    name.contains('.') && (!name.starts_with("runtime.") || exported_runtime)
}

/// The runtime's own functions, which `printStackRecord` leaves out at the leaf end.
fn is_runtime(name: &str) -> bool {
    name.starts_with("runtime.") || name.starts_with("internal/runtime/")
}

/// The frames of `stack` leaf first, each with the entry of its function (`None` for an
/// address no function contains).
fn frames_leaf_first<'a>(
    stack: &'a ProfileStack,
    group: &GoroutineGroup,
) -> Vec<(&'a Frame, Option<u64>)> {
    stack
        .frames
        .iter()
        .rev()
        .map(|frame| {
            let entry = group.pcs.iter().find(|pc| pc.pc == frame.address).and_then(|pc| pc.entry);
            (frame, entry)
        })
        .collect()
}

/// Names and paths come from the target's binary: no control character (a tab or a
/// newline would break the format) gets through.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect::<String>().into()
    } else {
        text.into()
    }
}

/// `text` aligned as Go's `text/tabwriter` with `printCountProfile`'s settings aligns it:
/// each tab-terminated cell is padded with tabs to its column's width (the widest cell
/// plus one, rounded up to a tab stop), a column being that cell of consecutive lines
/// that have one.
fn tabwriter(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|line| line.split('\t').collect()).collect();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut widths = Vec::new();
    tab_format(&lines, 0, lines.len(), &mut widths, &mut out);
    out
}

/// `tabwriter.Writer.format`: the lines `line0..line1`, whose columns left of
/// `widths.len()` have those widths.
fn tab_format(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        // The last cell of a line is not tab-terminated: it belongs to no column.
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        tab_write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = TAB_MIN_WIDTH;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(lines[this][column].chars().count() + TAB_PADDING);
            this += 1;
        }
        widths.push(width);
        tab_format(lines, line0, this, widths, out);
        widths.pop();
        line0 = this;
    }
    tab_write_lines(lines, line0, line1, widths, out);
}

/// `tabwriter.Writer.writeLines` with tab padding: a newline after every line but the
/// very last (what followed the text's last newline).
fn tab_write_lines(
    lines: &[Vec<&str>],
    line0: usize,
    line1: usize,
    widths: &[usize],
    out: &mut String,
) {
    for (index, line) in lines.iter().enumerate().take(line1).skip(line0) {
        for (column, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(&width) = widths.get(column) {
                let stop = width.div_ceil(TAB_WIDTH) * TAB_WIDTH;
                let padding = stop - cell.chars().count();
                out.extend(std::iter::repeat_n('\t', padding.div_ceil(TAB_WIDTH)));
            }
        }
        if index + 1 < lines.len() {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracer_common::WaitKind;

    use super::*;
    use crate::{
        golang::{CreatedBy, DumpedGoroutine, GoPc},
        model::{Profile, ProfileKind, WaitStats},
    };

    fn frame(name: &str, file: &str, line: u32, address: u64, inlined: bool) -> Frame {
        Frame {
            name: name.into(),
            module: "pileup".into(),
            module_is_main: true,
            file: Some(file.into()),
            line: Some(line),
            inlined,
            address,
        }
    }

    /// 3 goroutines in `main.sendStat` (chan send), 1 in `main.receiver` whose wait
    /// `main.awaitValue` is inlined into it.
    fn dump() -> GoroutineDump {
        let proc = "/usr/lib/go/src/runtime/proc.go";
        let chan = "/usr/lib/go/src/runtime/chan.go";
        let send_frames = vec![
            frame("main.sendStat", "/src/pileup.go", 12, 0x4a1027, false),
            frame("runtime.chansend1", chan, 145, 0x404c1d, false),
            frame("runtime.chansend", chan, 259, 0x40526f, false),
            frame("runtime.gopark", proc, 363, 0x43a1d6, false),
        ];
        let recv_frames = vec![
            frame("main.receiver", "/src/pileup.go", 30, 0x4a1105, false),
            frame("main.awaitValue", "/src/pileup.go", 25, 0x4a1105, true),
            frame("runtime.chanrecv1", chan, 442, 0x404f58, false),
            frame("runtime.chanrecv", chan, 583, 0x4057f2, false),
            frame("runtime.gopark", proc, 363, 0x43a1d6, false),
        ];
        let entries = [
            (0x43a1d6, 0x43a100),
            (0x40526f, 0x405000),
            (0x404c1d, 0x404c00),
            (0x4a1027, 0x4a1000),
            (0x4057f2, 0x405700),
            (0x404f58, 0x404f40),
            (0x4a1105, 0x4a10e0),
        ];
        let pcs = |frames: &[Frame]| {
            let mut addresses: Vec<u64> = frames.iter().map(|f| f.address).collect();
            addresses.dedup();
            addresses
                .into_iter()
                .rev()
                .map(|pc| GoPc {
                    pc,
                    entry: entries.iter().find(|(at, _)| *at == pc).map(|&(_, entry)| entry),
                })
                .collect()
        };
        let stack = |frames: Vec<Frame>, reason: &str, ids: &[u32]| {
            let mut stats = WaitStats::default();
            for &id in ids {
                stats.add_unaged(u64::from(id));
            }
            ProfileStack {
                frames,
                kind: WaitKind::Goroutine,
                object: Some(reason.into()),
                truncated: false,
                in_progress: true,
                stats,
                process: None,
            }
        };
        let created = |function: &str, line, offset| {
            Some(std::sync::Arc::new(CreatedBy {
                function: function.into(),
                file: Some("/src/pileup.go".into()),
                line: Some(line),
                offset,
            }))
        };
        let by_main = created("main.main", 40, Some(0x5e));
        let goroutine = |id, minutes: Option<u64>| DumpedGoroutine {
            id,
            waiting: minutes.map(|minutes| Duration::from_secs(minutes * 60 + 7)),
            created_by: by_main.clone(),
            parent_id: 1,
        };
        let mut profile = Profile::new(ProfileKind::Snapshot, 42, "pileup".into());
        profile.stacks = vec![
            stack(send_frames.clone(), "chan send", &[20, 21, 5_000_000]),
            stack(recv_frames.clone(), "chan receive", &[7]),
        ];
        GoroutineDump {
            profile,
            groups: vec![
                GoroutineGroup {
                    wait_reason: "chan send".into(),
                    pcs: pcs(&send_frames),
                    goroutines: vec![
                        goroutine(20, None),
                        // Created by a goroutine of a Go before 1.21, which kept no parent.
                        DumpedGoroutine {
                            created_by: created("main.startSenders.func1", 33, None),
                            parent_id: 0,
                            ..goroutine(21, Some(0))
                        },
                        goroutine((1 << 32) + 5_000_000, Some(3)),
                    ],
                },
                GoroutineGroup {
                    wait_reason: "chan receive".into(),
                    pcs: pcs(&recv_frames),
                    // The runtime's own creations are not said.
                    goroutines: vec![DumpedGoroutine {
                        created_by: created("runtime.gcenable", 200, Some(0x20)),
                        ..goroutine(7, Some(12))
                    }],
                },
            ],
        }
    }

    #[test]
    fn count_text_is_go_s_debug_1() {
        // As Go 1.19's printCountProfile writes it.
        let want = "goroutine profile: total 4\n\
            3 @ 0x43a1d6 0x40526f 0x404c1d 0x4a1027\n\
            #\t0x4a1026\tmain.sendStat+0x26\t/src/pileup.go:12\n\
            \n\
            1 @ 0x43a1d6 0x4057f2 0x404f58 0x4a1105\n\
            #\t0x4a1104\tmain.awaitValue+0x24\t/src/pileup.go:25\n\
            #\t0x4a1104\tmain.receiver+0x24\t/src/pileup.go:30\n\
            \n";
        assert_eq!(count_text(&dump()), want);
    }

    #[test]
    fn traceback_text_is_go_s_debug_2() {
        let want = "goroutine 7 [chan receive, 12 minutes]:\n\
            main.awaitValue(...)\n\
            \t/src/pileup.go:25\n\
            main.receiver(...)\n\
            \t/src/pileup.go:30 +0x25\n\
            \n\
            goroutine 20 [chan send]:\n\
            main.sendStat(...)\n\
            \t/src/pileup.go:12 +0x27\n\
            created by main.main in goroutine 1\n\
            \t/src/pileup.go:40 +0x5e\n\
            \n\
            goroutine 21 [chan send]:\n\
            main.sendStat(...)\n\
            \t/src/pileup.go:12 +0x27\n\
            created by main.startSenders.func1\n\
            \t/src/pileup.go:33\n\
            \n\
            goroutine 4299967296 [chan send, 3 minutes]:\n\
            main.sendStat(...)\n\
            \t/src/pileup.go:12 +0x27\n\
            created by main.main in goroutine 1\n\
            \t/src/pileup.go:40 +0x5e\n";
        assert_eq!(traceback_text(&dump()), want);
    }

    #[test]
    fn only_runtime_frames_are_all_printed() {
        let mut dump = dump();
        dump.profile.stacks[0].frames.remove(0);
        let text = count_text(&dump);
        assert!(text.contains("runtime.gopark+0xd5"), "{text}");
        assert!(traceback_text(&dump).contains("runtime.gopark(...)\n"));
    }

    #[test]
    fn tabwriter_pads_columns_of_consecutive_lines_to_tab_stops() {
        assert_eq!(tabwriter("a\tb\nlong cell\tc\n\nx\ty\n"), "a\t\tb\nlong cell\tc\n\nx\ty\n");
        // The last cell of a line is in no column.
        assert_eq!(tabwriter("#\t0x1\n#\t0x2\tf\t\n"), "#\t0x1\n#\t0x2\tf\t\n");
    }

    #[test]
    fn control_characters_from_the_binary_are_replaced() {
        assert_eq!(printable("main.f\tx\ny"), "main.f\u{fffd}x\u{fffd}y");
        assert_eq!(printable("main.f"), "main.f");
    }
}
