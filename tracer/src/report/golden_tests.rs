//! Golden files of the user-visible outputs on a fixed recording
//! (`tracer/testdata/golden/`). After an intended change, refresh them with
//! `TRACER_REFRESH_GOLDEN=1 cargo test -p tracer golden` and review the diff.

use std::path::PathBuf;

use crate::report::{
    RenderOptions, Weight,
    fixtures::{fixture_profile, fixture_provenance},
    flamegraph::write_flamegraph,
    folded::write_folded_weighted,
    json::write_json,
    summary::render_summary,
};

pub(crate) fn check_golden(name: &str, actual: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden").join(name);
    if std::env::var_os("TRACER_REFRESH_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("read {}: {e} (TRACER_REFRESH_GOLDEN=1 writes it)", path.display())
    });
    if expected != actual {
        panic!(
            "{name} differs from {}; if the change is intended, rerun with TRACER_REFRESH_GOLDEN=1\n\
             actual:\n{}",
            path.display(),
            String::from_utf8_lossy(actual)
        );
    }
}

#[test]
fn golden_folded() {
    let mut out = Vec::new();
    write_folded_weighted(&fixture_profile(), Weight::Time, &mut out).unwrap();
    check_golden("recording.folded", &out);
}

#[test]
fn golden_svg() {
    let mut out = Vec::new();
    write_flamegraph(&fixture_profile(), Weight::Time, &mut out).unwrap();
    check_golden("recording.svg", &out);
}

#[test]
fn golden_text_table() {
    let profile = fixture_profile();
    let text = render_summary(&profile, RenderOptions::DEFAULT_TOP);
    // A wait chain is one line whatever its length, to be read (and grepped) whole.
    let chains = profile.chains.len();
    assert!(text.lines().nth(1) == Some("WAIT CHAINS") && chains > 0, "{text}");
    for line in text.lines().skip(2 + chains) {
        // So is a backed-up socket's peer line.
        if line.starts_with(crate::report::summary::BACKED_UP_PEER_MARK) {
            continue;
        }
        assert!(line.chars().count() <= 100, "over 100 columns: {line}");
    }
    check_golden("recording.txt", text.as_bytes());
}

/// The reader property tests' seeds are the fixture in JSON and pprof: refreshed with
/// the golden files.
#[test]
fn golden_seeds() {
    let mut json = Vec::new();
    write_json(&fixture_profile(), &fixture_provenance(), &mut json).unwrap();
    check_golden("../seeds/recording.json", &json);
    let mut pprof = Vec::new();
    crate::report::pprof::write_pprof(
        &fixture_profile(),
        &fixture_provenance(),
        Weight::Time,
        &mut pprof,
    )
    .unwrap();
    check_golden("../seeds/recording.pb.gz", &pprof);
}

#[test]
fn golden_json() {
    let mut out = Vec::new();
    write_json(&fixture_profile(), &fixture_provenance(), &mut out).unwrap();
    check_golden("recording.json", &out);
}
