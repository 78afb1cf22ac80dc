//! Real-kernel tests of the reports the ecosystem reads: a recording of the Rust pile-up as
//! pprof (read by the real `go tool pprof`), JSON (read back by `tracer report`) and SVG
//! (checked by `xmllint`); and `tracer report` on broken files. They need root, `go` and
//! `xmllint` (`cargo xtask setup` installs both) and run one at a time.

use std::{path::Path, time::Duration};

use tracer_tests::{
    TempDir, assert_svg, run_tool, start_rust_pileup, tracer_record, tracer_report,
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

#[test]
fn recording_opens_in_pprof_xmllint_and_tracer_report() {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    let dir = TempDir::new("reports");
    let [pprof, json, svg, folded] =
        ["waits.pb.gz", "waits.json", "waits.svg", "waits.folded"].map(|name| dir.join(name));
    let out = tracer_record(
        pileup.workload.pid(),
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
    assert!(
        out.status.success(),
        "tracer record failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    drop(pileup);

    // pprof: the real go tool reads it, names the call site, and filters on the labels.
    let top = run_tool("go", &["tool", "pprof", "-top", utf8(&pprof)], TOOL_TIMEOUT).stdout;
    assert!(
        top.contains("rust_pileup::send_stat"),
        "go tool pprof -top does not name send_stat:\n{top}"
    );
    assert!(
        top.contains("Type: blocked"),
        "the default sample type is not blocked time:\n{top}"
    );
    let traces = run_tool(
        "go",
        &["tool", "pprof", "-traces", utf8(&pprof)],
        TOOL_TIMEOUT,
    )
    .stdout;
    for expected in [
        "wait_kind:  futex",
        "wait_kind:  send",
        "thread:  handler",
        "rust_pileup::send_stat",
        "comm: rust-pileup",
    ] {
        assert!(
            traces.contains(expected),
            "go tool pprof -traces lacks {expected:?}:\n{traces}"
        );
    }
    let sends = run_tool(
        "go",
        &[
            "tool",
            "pprof",
            "-top",
            "-tagfocus=wait_kind=send",
            utf8(&pprof),
        ],
        TOOL_TIMEOUT,
    )
    .stdout;
    assert!(
        sends.contains("rust_pileup::write_to_backend")
            && !sends.contains("rust_pileup::send_stat"),
        "-tagfocus=wait_kind=send should keep the reporter's sends only:\n{sends}"
    );
    let reporter = run_tool(
        "go",
        &[
            "tool",
            "pprof",
            "-top",
            "-tagfocus=thread=reporter",
            utf8(&pprof),
        ],
        TOOL_TIMEOUT,
    )
    .stdout;
    assert!(
        !reporter.contains("rust_pileup::handler"),
        "-tagfocus=thread=reporter kept the handlers' stacks:\n{reporter}"
    );

    // SVG: well-formed XML, with the legend.
    assert_svg(&svg);
    run_tool("xmllint", &["--noout", utf8(&svg)], TOOL_TIMEOUT);
    assert!(
        read(&svg).contains("id=\"legend\""),
        "{} has no legend",
        svg.display()
    );

    // JSON: the versioned schema, and `tracer report` reproduces the recording's folded
    // stacks from it (and from the pprof file).
    let json_text = read(&json);
    assert!(
        json_text.contains("\"schema\": \"tracer-profile/1\""),
        "no schema field in {}",
        json.display()
    );
    let recorded = read(&folded);
    assert!(
        !recorded.is_empty(),
        "the recording's folded output is empty"
    );
    for (input, name) in [(&json, "from-json.folded"), (&pprof, "from-pprof.folded")] {
        let again = dir.join(name);
        let report = tracer_report(&[utf8(input), "--output", utf8(&again)], TOOL_TIMEOUT);
        assert!(
            report.status.success(),
            "tracer report {} failed: {}",
            input.display(),
            report.stderr
        );
        assert_eq!(
            read(&again),
            recorded,
            "tracer report {} changed the folded stacks",
            input.display()
        );
    }
    let rendered_svg = dir.join("from-json.svg");
    let report = tracer_report(
        &[utf8(&json), "--output", utf8(&rendered_svg)],
        TOOL_TIMEOUT,
    );
    assert!(
        report.status.success(),
        "tracer report to SVG failed: {}",
        report.stderr
    );
    run_tool("xmllint", &["--noout", utf8(&rendered_svg)], TOOL_TIMEOUT);

    // A diff of the recording against itself: nothing changed.
    let [diff_svg, diff_folded, diff_txt] =
        ["diff.svg", "diff.folded", "diff.txt"].map(|name| dir.join(name));
    let diff = tracer_report(
        &[
            utf8(&json),
            "--diff",
            utf8(&json),
            "--output",
            utf8(&diff_svg),
            "--output",
            utf8(&diff_folded),
            "--output",
            utf8(&diff_txt),
        ],
        TOOL_TIMEOUT,
    );
    assert!(
        diff.status.success(),
        "tracer report --diff failed: {}",
        diff.stderr
    );
    assert!(
        read(&diff_txt).contains("no call site changed"),
        "a diff against itself lists changes:\n{}",
        read(&diff_txt)
    );
    let differential = read(&diff_folded);
    assert!(
        !differential.is_empty(),
        "the differential folded stacks are empty"
    );
    for line in differential.lines() {
        let counts: Vec<&str> = line.rsplitn(3, ' ').take(2).collect();
        assert_eq!(
            counts[0], counts[1],
            "before and after differ in a self-diff: {line}"
        );
    }
    run_tool("xmllint", &["--noout", utf8(&diff_svg)], TOOL_TIMEOUT);
}

/// The profiles the property tests mutate, kept in the repository.
const SEED_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tracer/testdata/seeds/recording.json"
);
const SEED_PPROF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tracer/testdata/seeds/recording.pb.gz"
);

#[test]
fn broken_files_fail_with_one_line_naming_them() {
    let dir = TempDir::new("bad-reports");
    let json = std::fs::read(SEED_JSON).unwrap_or_else(|e| panic!("read {SEED_JSON}: {e}"));
    let pprof = std::fs::read(SEED_PPROF).unwrap_or_else(|e| panic!("read {SEED_PPROF}: {e}"));
    let cases: [(&str, &[u8], &str); 5] = [
        ("truncated.json", &json[..json.len() / 2], "not valid JSON"),
        (
            "truncated.pb.gz",
            &pprof[..pprof.len() / 2],
            "truncated or corrupt gzip data",
        ),
        (
            "foreign.json",
            br#"{"traceEvents": []}"#,
            "not a tracer profile",
        ),
        (
            "foreign.bin",
            b"\x7fELF\x02\x01\x01",
            "not a tracer profile",
        ),
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
        assert_eq!(
            lines.len(),
            1,
            "{name}: not one line on stderr:\n{}",
            out.stderr
        );
        let prefix = format!("tracer: {}: ", path.display());
        assert!(
            lines[0].starts_with(&prefix) && lines[0].contains(reason),
            "{name}: expected `{prefix}...{reason}...`, got: {}",
            lines[0]
        );
        assert!(
            !output.exists(),
            "{name}: a report was written from a broken file"
        );
    }
}
