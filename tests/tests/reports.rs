//! Real-kernel tests of the reports the ecosystem reads: a recording of the Rust pile-up as
//! JSON and pprof (read back into the data model, and by `tracer report`), pprof (read by the
//! real `go tool pprof`) and SVG (checked by `xmllint`); and `tracer report` on broken files.
//! They need root, `go` and `xmllint` (`cargo xtask setup` installs both) and run one at a
//! time.

use std::{path::Path, path::PathBuf, time::Duration};

use tracer_tests::{
    Profile, ProfileKind, ProfileStack, TempDir, WaitKind, assert_svg, has_function, read_profile,
    run_tool, start_rust_pileup, top_stacks, tracer_record, tracer_report,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_PILEUP: &str = env!("CARGO_BIN_EXE_rust-pileup");

/// Enough handlers that the pile-up dominates the recording, as in record.rs.
const HANDLERS: usize = 16;
/// Long enough for many handler waits and several blocked sends of the reporter.
const RECORD_DURATION: &str = "2s";
/// The workload outlives the recording; its guard kills it when the test ends.
const WORKLOAD_SECONDS: f64 = 60.0;
/// Recording plus attaching and symbolizing, with a wide margin for a loaded machine.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// `tracer report`, `go tool pprof` and `xmllint` read a few hundred KiB at most.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One recording of the Rust pile-up, written in every format at once.
struct Recording {
    dir: TempDir,
    pid: u32,
    pprof: PathBuf,
    json: PathBuf,
    svg: PathBuf,
    folded: PathBuf,
}

/// Records the Rust pile-up for `RECORD_DURATION` into `.pb.gz`, `.json`, `.svg` and
/// `.folded` files in a new directory, and stops the workload.
fn record_pileup(label: &str) -> Recording {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    let dir = TempDir::new(label);
    let [pprof, json, svg, folded] =
        ["waits.pb.gz", "waits.json", "waits.svg", "waits.folded"].map(|name| dir.join(name));
    let pid = pileup.workload.pid();
    let out = tracer_record(
        pid,
        &[
            "--duration",
            RECORD_DURATION,
            "--output",
            utf8(&pprof),
            "--output",
            utf8(&json),
            "--output",
            utf8(&svg),
            "--output",
            utf8(&folded),
        ],
        RECORD_TIMEOUT,
    );
    tracer_tests::assert_success("tracer record", &out);
    Recording { dir, pid, pprof, json, svg, folded }
}

/// The handlers' futex waits at `send_stat` and the reporter's sends at `write_to_backend`:
/// what a recording of the pile-up must hold, in whatever format it was read from.
fn assert_pileup(profile: &Profile, pid: u32, format: &str) {
    assert_eq!(profile.kind, ProfileKind::Recording, "{format}");
    assert_eq!(profile.pid, pid, "{format}: the profile names another process");
    assert_eq!(profile.comm, "rust-pileup", "{format}");
    let handler_wait =
        |s: &ProfileStack| s.kind == WaitKind::Futex && s.call_site().ends_with("send_stat");
    let reporter_send =
        |s: &ProfileStack| s.kind == WaitKind::Send && has_function(s, "write_to_backend");
    for (what, pred) in [
        ("handler futex waits at send_stat", &handler_wait as &dyn Fn(&ProfileStack) -> bool),
        ("reporter sends in write_to_backend", &reporter_send),
    ] {
        assert!(
            profile.stacks.iter().any(|s| pred(s) && s.stats.total_ns > 0),
            "{format}: no {what}; stacks:\n{}",
            top_stacks(profile, |_| true, 20)
        );
    }
}

/// A stack as two readings must agree on it: kind, object, still blocked, frames, waits.
type StackKey = (WaitKind, Option<String>, bool, Vec<String>, u64);

/// What two readings of one recording must agree on, stack by stack, in a stable order.
fn stack_keys(profile: &Profile) -> Vec<StackKey> {
    let mut keys: Vec<_> = profile
        .stacks
        .iter()
        .map(|s| {
            let names = s.frames.iter().map(|frame| frame.name.clone()).collect();
            (s.kind, s.object.clone(), s.in_progress, names, s.stats.total_ns)
        })
        .collect();
    keys.sort();
    keys
}

#[test]
fn json_recording_reads_back_into_the_profile() {
    let recording = record_pileup("reports-json");
    // The versioned schema, named in the file.
    let json_text = read(&recording.json);
    assert!(
        json_text.contains("\"schema\": \"tracer-profile/2\""),
        "no schema field in {}",
        recording.json.display()
    );
    let profile = read_profile(&recording.json);
    assert_pileup(&profile, recording.pid, "JSON");
    // The threads are named, so a reader can tell the handlers from the reporter.
    let names: std::collections::BTreeSet<&str> =
        profile.thread_names.values().map(String::as_str).collect();
    assert!(
        names.contains("handler") && names.contains("reporter"),
        "thread names {names:?} lack handler or reporter"
    );
}

#[test]
fn pprof_recording_reads_back_like_the_json_one() {
    let recording = record_pileup("reports-pprof-model");
    let from_pprof = read_profile(&recording.pprof);
    assert_pileup(&from_pprof, recording.pid, "pprof");
    assert_eq!(
        stack_keys(&from_pprof),
        stack_keys(&read_profile(&recording.json)),
        "the pprof and JSON files of one recording hold different stacks"
    );
}

#[test]
fn pprof_recording_opens_in_go_tool_pprof() {
    let recording = record_pileup("reports-pprof");
    let pprof = utf8(&recording.pprof);
    // The real go tool reads it, names the call site, and filters on the labels.
    let top = run_tool("go", &["tool", "pprof", "-top", pprof], TOOL_TIMEOUT).stdout;
    assert!(
        top.contains("rust_pileup::send_stat"),
        "go tool pprof -top does not name send_stat:\n{top}"
    );
    assert!(top.contains("Type: blocked"), "the default sample type is not blocked time:\n{top}");
    let traces = run_tool("go", &["tool", "pprof", "-traces", pprof], TOOL_TIMEOUT).stdout;
    for expected in [
        "wait_kind:  futex",
        "wait_kind:  send",
        "thread:  handler",
        "rust_pileup::send_stat",
        "comm: rust-pileup",
    ] {
        assert!(traces.contains(expected), "go tool pprof -traces lacks {expected:?}:\n{traces}");
    }
    let focus =
        |tag: &str| run_tool("go", &["tool", "pprof", "-top", tag, pprof], TOOL_TIMEOUT).stdout;
    let sends = focus("-tagfocus=wait_kind=send");
    assert!(
        sends.contains("rust_pileup::write_to_backend")
            && !sends.contains("rust_pileup::send_stat"),
        "-tagfocus=wait_kind=send should keep the reporter's sends only:\n{sends}"
    );
    let reporter = focus("-tagfocus=thread=reporter");
    assert!(
        !reporter.contains("rust_pileup::handler"),
        "-tagfocus=thread=reporter kept the handlers' stacks:\n{reporter}"
    );
}

#[test]
fn svg_recording_is_well_formed_xml_with_a_legend() {
    let recording = record_pileup("reports-svg");
    assert_svg(&recording.svg);
    run_tool("xmllint", &["--noout", utf8(&recording.svg)], TOOL_TIMEOUT);
    assert!(
        read(&recording.svg).contains("id=\"legend\""),
        "{} has no legend",
        recording.svg.display()
    );
}

#[test]
fn tracer_report_renders_saved_profiles_like_the_recording() {
    let recording = record_pileup("reports-rerender");
    let recorded = read(&recording.folded);
    assert!(!recorded.is_empty(), "the recording's folded output is empty");
    // The same folded stacks from the JSON and from the pprof file.
    for (input, name) in
        [(&recording.json, "from-json.folded"), (&recording.pprof, "from-pprof.folded")]
    {
        let again = recording.dir.join(name);
        let report = tracer_report(&[utf8(input), "--output", utf8(&again)], TOOL_TIMEOUT);
        tracer_tests::assert_success(&format!("tracer report {}", input.display()), &report);
        // The pile-up's recording has wakers, chains, a timeline, histograms of its waits'
        // lengths and a backed-up socket (the reporter's, behind the slow backend's
        // window), which pprof has no place for but in comments: said, where the table
        // left them out without a word.
        let said = report.stderr.contains(
            "has no place for who woke whom, the wait chains, the timeline (the SVG's chart by \
             second), the waits' histograms of lengths and the backed-up sockets (in the \
             file's comments)",
        );
        assert_eq!(said, *input == recording.pprof, "stderr:\n{}", report.stderr);
        assert_eq!(
            read(&again),
            recorded,
            "tracer report {} changed the folded stacks",
            input.display()
        );
    }
    let rendered_svg = recording.dir.join("from-json.svg");
    let report =
        tracer_report(&[utf8(&recording.json), "--output", utf8(&rendered_svg)], TOOL_TIMEOUT);
    tracer_tests::assert_success("tracer report to SVG", &report);
    run_tool("xmllint", &["--noout", utf8(&rendered_svg)], TOOL_TIMEOUT);
}

#[test]
fn a_diff_of_a_recording_against_itself_changes_nothing() {
    let recording = record_pileup("reports-diff");
    let json = utf8(&recording.json);
    let [diff_svg, diff_folded, diff_txt] =
        ["diff.svg", "diff.folded", "diff.txt"].map(|name| recording.dir.join(name));
    let diff = tracer_report(
        &[
            json,
            "--diff",
            json,
            "--output",
            utf8(&diff_svg),
            "--output",
            utf8(&diff_folded),
            "--output",
            utf8(&diff_txt),
        ],
        TOOL_TIMEOUT,
    );
    tracer_tests::assert_success("tracer report --diff", &diff);
    // The table's wording is pinned by golden files; here it only has to be written.
    assert!(!read(&diff_txt).trim().is_empty(), "the diff table is empty");
    // Every differential stack has the same weight before and after.
    let differential = read(&diff_folded);
    assert!(!differential.is_empty(), "the differential folded stacks are empty");
    for line in differential.lines() {
        let counts: Vec<&str> = line.rsplitn(3, ' ').take(2).collect();
        assert_eq!(counts[0], counts[1], "before and after differ in a self-diff: {line}");
    }
    run_tool("xmllint", &["--noout", utf8(&diff_svg)], TOOL_TIMEOUT);

    // A snapshot against a recording: one line and exit code 1, no table.
    let seed = std::fs::read_to_string(SEED_JSON).expect("the seed profile");
    let snapshot = recording.dir.join("snapshot.json");
    let snapshot_text = seed.replacen(r#""kind": "recording""#, r#""kind": "snapshot""#, 1);
    assert_ne!(snapshot_text, seed, "the seed names its kind");
    std::fs::write(&snapshot, snapshot_text).expect("write the snapshot");
    let mixed = tracer_report(&[json, "--diff", utf8(&snapshot)], TOOL_TIMEOUT);
    assert_eq!(mixed.status.code(), Some(1), "stderr:\n{}", mixed.stderr);
    assert_eq!(mixed.stderr.lines().count(), 1, "stderr:\n{}", mixed.stderr);
    assert!(mixed.stderr.contains("a diff compares two of a kind"), "{}", mixed.stderr);
    assert!(mixed.stdout.is_empty(), "stdout:\n{}", mixed.stdout);
}

/// The profiles the property tests mutate, kept in the repository.
const SEED_JSON: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer/testdata/seeds/recording.json");
const SEED_PPROF: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer/testdata/seeds/recording.pb.gz");

#[test]
fn broken_files_fail_with_one_line_naming_them() {
    let dir = TempDir::new("bad-reports");
    let json = std::fs::read(SEED_JSON).unwrap_or_else(|e| panic!("read {SEED_JSON}: {e}"));
    let pprof = std::fs::read(SEED_PPROF).unwrap_or_else(|e| panic!("read {SEED_PPROF}: {e}"));
    let cases: [(&str, &[u8], &str); 5] = [
        ("truncated.json", &json[..json.len() / 2], "not valid JSON"),
        ("truncated.pb.gz", &pprof[..pprof.len() / 2], "truncated or corrupt gzip data"),
        ("foreign.json", br#"{"traceEvents": []}"#, "not a tracer profile"),
        ("foreign.bin", b"\x7fELF\x02\x01\x01", "not a tracer profile"),
        ("empty.json", b"", "empty file"),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let output = dir.join("out.svg");
        let out = tracer_report(&[utf8(&path), "--output", utf8(&output)], TOOL_TIMEOUT);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: exit status {}; stderr:\n{}",
            out.status,
            out.stderr
        );
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: not one line on stderr:\n{}", out.stderr);
        let prefix = format!("tracer: {}: ", path.display());
        assert!(
            lines[0].starts_with(&prefix) && lines[0].contains(reason),
            "{name}: expected `{prefix}...{reason}...`, got: {}",
            lines[0]
        );
        assert!(!output.exists(), "{name}: a report was written from a broken file");
    }
}

/// A file far larger than any profile the tracer writes is refused in one line before it is
/// read (reading takes several times a file's size in memory).
#[test]
fn an_oversized_profile_is_refused_before_it_is_read() {
    let dir = TempDir::new("huge-report");
    let path = dir.join("huge.json");
    let file = std::fs::File::create(&path).expect("create huge.json");
    // Sparse: 400 MiB that take no disk, starting like a JSON profile.
    std::os::unix::fs::FileExt::write_at(&file, b"{", 0).expect("write the first byte");
    file.set_len(400 << 20).expect("extend huge.json");
    let out = tracer_report(&[utf8(&path)], TOOL_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "not one line:\n{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!("tracer: {}: 400 MiB, larger than", path.display())),
        "{}",
        out.stderr
    );
}
