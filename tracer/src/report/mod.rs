//! Exporters: each reads a `Profile` and writes one format; `json` and `pprof` also read
//! their files back (`tracer report`), and `diff` compares two profiles.

pub mod diff;
pub mod flamegraph;
pub mod folded;
pub mod json;
pub mod pprof;
pub mod summary;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
pub(crate) mod golden_tests;
#[cfg(test)]
mod reader_props;

use anyhow::Context as _;
use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use crate::model::{Profile, ProfileKind, ProfileStack};

/// A report format, named by the output file's extension (or `--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Collapsed stacks (`.folded`).
    Folded,
    /// Interactive flamegraph (`.svg`).
    Svg,
    /// gzip-compressed pprof `profile.proto` (`.pb.gz`, `.pprof`).
    Pprof,
    /// tracer's versioned JSON schema (`.json`), the format `tracer report` reads back.
    Json,
    /// The text summary printed to stdout (`.txt`).
    Text,
}

/// The extensions, as the error message lists them.
const EXTENSIONS: &str = ".folded, .svg, .pb.gz, .pprof, .json or .txt";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The extension names no format we write.
    #[error("{}: unknown output extension (use {EXTENSIONS})", .0.display())]
    UnknownExtension(PathBuf),
    /// The file cannot be created.
    #[error("{}: cannot write", .path.display())]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Self, OutputError> {
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if name.ends_with(".pb.gz") {
            return Ok(Format::Pprof);
        }
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("folded") => Ok(Format::Folded),
            Some("svg") => Ok(Format::Svg),
            Some("pprof") => Ok(Format::Pprof),
            Some("json") => Ok(Format::Json),
            Some("txt") => Ok(Format::Text),
            _ => Err(OutputError::UnknownExtension(path.to_path_buf())),
        }
    }
}

/// What a flamegraph's width (and pprof's default sample type) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Weight {
    /// Blocked time (microseconds in folded stacks; the default of a recording).
    Time,
    /// Number of waits (in a snapshot: of threads blocked).
    Count,
    /// Number of distinct threads (the default of a snapshot). In a recording a
    /// thread can wait on several stacks, so these do not add up to the process's
    /// thread count.
    Threads,
}

impl Weight {
    pub fn default_for(kind: ProfileKind) -> Self {
        match kind {
            ProfileKind::Recording => Weight::Time,
            ProfileKind::Snapshot => Weight::Threads,
        }
    }

    /// One stack's weight: microseconds, waits or threads.
    pub fn of(self, stack: &ProfileStack) -> u64 {
        match self {
            Weight::Time => stack.stats.total_ns / 1_000,
            Weight::Count => stack.stats.waits,
            Weight::Threads => stack.stats.threads.len() as u64,
        }
    }

    /// What the weight counts, for a flamegraph's tooltips.
    pub fn unit(self) -> &'static str {
        match self {
            Weight::Time => "us blocked",
            Weight::Count => "waits",
            Weight::Threads => "threads",
        }
    }
}

/// What a report says about where it came from, beyond the `Profile`: read from the
/// machine when the profile is first written, kept by the JSON and pprof files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The version of the tracer that recorded the profile.
    pub tracer_version: String,
    /// The kernel release (`uname -r`) of the machine it was recorded on.
    pub kernel: Option<String>,
    /// The target's command line, when it could be read.
    pub command_line: Option<Vec<String>>,
}

impl Provenance {
    /// This tracer and this machine, for a profile just taken: its command line was read
    /// when tracing began; one that lacks it is read now unless the target exited (the
    /// pid may already name another process).
    pub fn of_profile(profile: &Profile) -> Self {
        let command_line = match &profile.command_line {
            Some(command_line) => Some(command_line.clone()),
            None if profile.target_exited => None,
            None => crate::pipeline::target::read_command_line(profile.pid),
        };
        Self::with_command_line(command_line)
    }

    fn with_command_line(command_line: Option<Vec<String>>) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|release| release.trim().to_string());
        Self { tracer_version: TRACER_VERSION.to_string(), kernel, command_line }
    }
}

/// Writes `profile` to every output, its text table as long as stdout's (`top` rows),
/// saying so for each.
pub fn write_outputs(outputs: Vec<Output>, profile: &Profile, top: usize) -> anyhow::Result<()> {
    let provenance = Provenance::of_profile(profile);
    let options = RenderOptions { top, ..RenderOptions::default_for(profile.kind) };
    for output in outputs {
        let path = output.path.clone();
        output
            .write_with(profile, &provenance, options)
            .map_err(|err| err.context(format!("{}: cannot write the report", path.display())))?;
        eprintln!("tracer: wrote {}", path.display());
    }
    Ok(())
}

/// Prints `text` on stdout. A stdout that cannot take it (a reader that went away, as in
/// `| head`, or a full disk) is an error of one line, not a panic.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

pub const TRACER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A profile read back from a file `tracer` wrote, with where it came from.
#[derive(Clone, Debug)]
pub struct SavedProfile {
    pub profile: Profile,
    pub provenance: Provenance,
}

/// Why `tracer report` cannot read a file: each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be read at all.
    #[error("{}: cannot read", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Empty.
    #[error("{}: empty file", .0.display())]
    Empty(PathBuf),
    /// Neither JSON nor gzip.
    #[error("{}: not a tracer profile (expected tracer's JSON or a gzip pprof file)", .0.display())]
    Foreign(PathBuf),
    /// A JSON file that is not a readable tracer profile.
    #[error("{}", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: json::JsonError,
    },
    /// A gzip file that is not a readable tracer pprof profile.
    #[error("{}", .path.display())]
    Pprof {
        path: PathBuf,
        #[source]
        source: pprof::PprofError,
    },
}

/// Reads a profile `tracer` saved as JSON or pprof, telling them apart by content.
pub fn read_saved(path: &Path) -> Result<SavedProfile, ReadError> {
    let bytes = std::fs::read(path)
        .map_err(|source| ReadError::Unreadable { path: path.to_path_buf(), source })?;
    read_saved_bytes(path, &bytes)
}

pub fn read_saved_bytes(path: &Path, bytes: &[u8]) -> Result<SavedProfile, ReadError> {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    let path = || path.to_path_buf();
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    match first {
        None if bytes.is_empty() => Err(ReadError::Empty(path())),
        Some(b'{' | b'[') => {
            json::read_json(bytes).map_err(|source| ReadError::Json { path: path(), source })
        }
        _ if bytes.starts_with(&GZIP_MAGIC) => {
            pprof::read_pprof(bytes).map_err(|source| ReadError::Pprof { path: path(), source })
        }
        _ => Err(ReadError::Foreign(path())),
    }
}

/// How to render: the width of flamegraphs and the rows of the text table.
#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    pub weight: Weight,
    pub top: usize,
}

impl RenderOptions {
    /// The rows the stdout table shows by default (the CLI's `--top`).
    pub const DEFAULT_TOP: usize = 15;

    pub fn default_for(kind: ProfileKind) -> Self {
        Self { weight: Weight::default_for(kind), top: Self::DEFAULT_TOP }
    }
}

/// An output file, created before tracing starts so a bad path fails at once.
pub struct Output {
    pub path: PathBuf,
    pub format: Format,
    file: File,
}

impl Output {
    pub fn create(path: &Path) -> Result<Self, OutputError> {
        Self::create_as(path, Format::from_path(path)?)
    }

    pub fn create_as(path: &Path, format: Format) -> Result<Self, OutputError> {
        let file = File::create(path)
            .map_err(|source| OutputError::Unwritable { path: path.to_path_buf(), source })?;
        Ok(Self { path: path.to_path_buf(), format, file })
    }

    /// Writes `profile` in this output's format: `provenance` for the formats that carry it
    /// (JSON, pprof), `options` for the flamegraph's width and the text table's rows.
    pub fn write_with(
        self,
        profile: &Profile,
        provenance: &Provenance,
        options: RenderOptions,
    ) -> anyhow::Result<()> {
        let Output { path, format, file } = self;
        let mut out = BufWriter::new(file);
        match format {
            Format::Folded => folded::write_folded_weighted(profile, options.weight, &mut out)?,
            Format::Svg => flamegraph::write_flamegraph(profile, options.weight, &mut out)?,
            Format::Pprof => pprof::write_pprof(profile, provenance, options.weight, &mut out)?,
            Format::Json => json::write_json(profile, provenance, &mut out)?,
            Format::Text => {
                out.write_all(summary::render_summary(profile, options.top).as_bytes())?
            }
        }
        out.flush().map_err(|source| OutputError::Unwritable { path, source })?;
        Ok(())
    }

    /// Writes raw bytes (a diff's reports).
    pub fn write_bytes(self, bytes: &[u8]) -> Result<(), OutputError> {
        let Output { path, format: _, file } = self;
        let mut out = BufWriter::new(file);
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|source| OutputError::Unwritable { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_extensions() {
        assert_eq!(Format::from_path(Path::new("a/waits.svg")).unwrap(), Format::Svg);
        assert_eq!(Format::from_path(Path::new("waits.folded")).unwrap(), Format::Folded);
        assert_eq!(Format::from_path(Path::new("waits.pb.gz")).unwrap(), Format::Pprof);
        assert_eq!(Format::from_path(Path::new("waits.pprof")).unwrap(), Format::Pprof);
        assert_eq!(Format::from_path(Path::new("waits.json")).unwrap(), Format::Json);
        assert_eq!(Format::from_path(Path::new("waits.txt")).unwrap(), Format::Text);
        let err = Format::from_path(Path::new("waits.gz")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "waits.gz: unknown output extension (use .folded, .svg, .pb.gz, .pprof, .json or .txt)"
        );
    }
}
