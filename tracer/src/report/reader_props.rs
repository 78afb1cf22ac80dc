//! Property tests of the readers `tracer report` runs on untrusted files: whatever the
//! bytes, reading returns a profile or an error, never panics, and a profile it
//! returns renders in every format. Seeds (valid files to mutate) are kept in
//! `tracer/testdata/seeds/`.

use std::path::{Path, PathBuf};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use proptest::prelude::*;
use std::io::{Read as _, Write as _};

use crate::report::{
    Provenance, RenderOptions, Weight, diff, flamegraph, folded, json, pprof, read_saved_bytes,
    summary,
};

fn seeds(extension: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/seeds");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("seed entry").path())
        .filter(|path| path.to_string_lossy().ends_with(extension))
        .map(|path| std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no *{extension} seeds in {}", dir.display());
    seeds
}

/// Reads and, when that succeeds, renders every format: neither may panic.
fn read_and_render(bytes: &[u8]) {
    let Ok(saved) = read_saved_bytes(Path::new("fuzz"), bytes) else {
        return;
    };
    let profile = &saved.profile;
    let _ = summary::render_summary(profile, RenderOptions::DEFAULT_TOP);
    for weight in [Weight::Time, Weight::Count, Weight::Threads] {
        let mut sink = Vec::new();
        folded::write_folded_weighted(profile, weight, &mut sink).expect("folded to memory");
        flamegraph::write_flamegraph(profile, weight, &mut sink).expect("svg to memory");
        pprof::write_pprof(profile, &Provenance::default(), weight, &mut sink)
            .expect("pprof to memory");
        let _ = diff::differential_lines(profile, profile, weight);
    }
    json::write_json(profile, &saved.provenance, &mut Vec::new()).expect("json to memory");
    let _ = diff::site_changes(profile, profile);
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).expect("seed is gzip");
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("gzip to memory");
    encoder.finish().expect("gzip to memory")
}

/// Overwrites, inserts or removes bytes at the given positions (taken modulo the length).
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(position, op, value) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let at = position % bytes.len();
        match op % 3 {
            0 => bytes[at] = value,
            1 => bytes.insert(at, value),
            _ => {
                bytes.remove(at);
            }
        }
    }
    bytes
}

/// Replaces a value somewhere in a JSON tree: the shapes a corrupt or hand-edited
/// profile has (wrong types, huge or negative numbers, unknown kinds).
fn replace_value(value: &mut serde_json::Value, mut path: usize, replacement: &serde_json::Value) {
    use serde_json::Value;
    let children: Vec<&mut Value> = match value {
        Value::Object(map) => map.values_mut().collect(),
        Value::Array(items) => items.iter_mut().collect(),
        _ => Vec::new(),
    };
    if children.is_empty() || path.is_multiple_of(4) {
        *value = replacement.clone();
        return;
    }
    path /= 4;
    let count = children.len();
    let child = children.into_iter().nth(path % count).expect("index within bounds");
    replace_value(child, path / count.max(1), replacement);
}

fn json_values() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(u64::MAX)),
        "[a-z ;\\[\\]]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        read_and_render(&bytes);
        let mut json_like = b"{".to_vec();
        json_like.extend(&bytes);
        read_and_render(&json_like);
        let mut gzip_like = vec![0x1f, 0x8b];
        gzip_like.extend(&bytes);
        read_and_render(&gzip_like);
        read_and_render(&gzip(&bytes)); // valid gzip of garbage protobuf
    }

    #[test]
    fn truncated_seeds_read_without_panic(cut in any::<usize>()) {
        for seed in seeds(".json").into_iter().chain(seeds(".pb.gz")) {
            read_and_render(&seed[..cut % (seed.len() + 1)]);
        }
        for seed in seeds(".pb.gz") {
            let raw = gunzip(&seed);
            read_and_render(&gzip(&raw[..cut % (raw.len() + 1)]));
        }
    }

    #[test]
    fn mutated_seeds_read_without_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        for seed in seeds(".json") {
            read_and_render(&mutate(seed, &edits));
        }
        for seed in seeds(".pb.gz") {
            read_and_render(&gzip(&mutate(gunzip(&seed), &edits)));
        }
    }

    #[test]
    fn json_seeds_with_odd_values_read_without_panic(
        path in any::<usize>(),
        replacement in json_values(),
    ) {
        for seed in seeds(".json") {
            let mut value: serde_json::Value = serde_json::from_slice(&seed).expect("seed is JSON");
            replace_value(&mut value, path, &replacement);
            read_and_render(&serde_json::to_vec(&value).expect("JSON to memory"));
        }
    }
}

#[test]
fn seeds_are_readable_profiles() {
    for seed in seeds(".json").into_iter().chain(seeds(".pb.gz")) {
        read_saved_bytes(Path::new("seed"), &seed).expect("a seed reads back");
    }
}
