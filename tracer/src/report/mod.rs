//! Exporters: each reads a `Profile` and writes one format; `json` and `pprof` also read
//! their files back (`tracer report`), and `diff` compares two profiles.

pub mod diff;
pub mod flamegraph;
pub mod folded;
pub mod json;
pub mod json_chains;
pub mod pprof;
pub mod summary;
pub mod trace_json;

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
    /// Collapsed stacks with each wait chain as one tower (`.chains.folded`).
    ChainsFolded,
    /// A flamegraph of those (`.chains.svg`).
    ChainsSvg,
    /// A recording's timeline in Chrome's trace-event JSON (`.trace.json`), for Perfetto
    /// UI and speedscope.
    TraceJson,
}

/// The extensions, as the error message lists them.
const EXTENSIONS: &str =
    ".folded, .svg, .pb.gz, .pprof, .json, .txt, .chains.folded, .chains.svg or .trace.json";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The extension names no format we write.
    #[error("{}: unknown output extension (use {EXTENSIONS})", .0.display())]
    UnknownExtension(PathBuf),
    /// The file cannot be created or written.
    #[error("{}: cannot write", .path.display())]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A symbolic link: replacing it would break the link, following it would let whoever
    /// owns the link choose what root overwrites.
    #[error("{}: is a symbolic link; give the path of the file itself", .0.display())]
    Symlink(PathBuf),
    /// A directory, a device, a pipe: a report replaces a regular file or creates one.
    #[error("{}: not a regular file", .0.display())]
    NotRegular(PathBuf),
}

impl Format {
    /// The format a file's name asks for, its case aside (`REPORT.SVG` is an SVG).
    pub fn from_path(path: &Path) -> Result<Self, OutputError> {
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        let name = name.to_ascii_lowercase();
        if name.ends_with(".pb.gz") {
            return Ok(Format::Pprof);
        }
        if name.ends_with(".chains.folded") {
            return Ok(Format::ChainsFolded);
        }
        if name.ends_with(".chains.svg") {
            return Ok(Format::ChainsSvg);
        }
        if name.ends_with(".trace.json") {
            return Ok(Format::TraceJson);
        }
        match Path::new(&name).extension().and_then(|ext| ext.to_str()) {
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
/// saying so for each. Every output is attempted: each failure is one line on stderr, and
/// the error says how many failed.
pub fn write_outputs(outputs: Vec<Output>, profile: &Profile, top: usize) -> anyhow::Result<()> {
    let provenance = Provenance::of_profile(profile);
    let options = RenderOptions { top, ..RenderOptions::default_for(profile.kind) };
    let total = outputs.len();
    let failed = outputs
        .into_iter()
        .filter(|output| {
            let written = output.write_with(profile, &provenance, options);
            note_written(&output.path, written)
        })
        .count();
    outputs_failed(failed, total)
}

/// Says on stderr that `path` was written, or why not; true if it was not.
pub fn note_written(path: &Path, written: anyhow::Result<()>) -> bool {
    let line = match &written {
        Ok(()) => format!("tracer: wrote {}", path.display()),
        Err(err) => format!("tracer: {}: cannot write the report: {err:#}", path.display()),
    };
    note(&line);
    written.is_err()
}

/// The error of a run in which `failed` of `total` outputs could not be written.
pub fn outputs_failed(failed: usize, total: usize) -> anyhow::Result<()> {
    match failed {
        0 => Ok(()),
        _ => anyhow::bail!("{failed} of {total} reports not written"),
    }
}

/// A line on stderr that never panics: a terminal that hung up (SIGHUP) must not cost
/// the reports still to be written.
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `text` with its control characters written out (`\x1b`, `\u{9b}`), except the newlines
/// and tabs of our own layout: names come from the traced process, and one that holds
/// escape sequences must not drive root's terminal (set its title, clear it) or end up
/// in an SVG, which XML forbids them in.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls_but(text, &['\n', '\t'])
}

/// One name on one line: every control character written out, newlines too.
pub fn escape_name(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls_but(text, &[])
}

fn escape_controls_but<'a>(text: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    // U+FFFE and U+FFFF are no control characters, but XML (the SVG) forbids them.
    let escaped =
        |c: char| (c.is_control() || c == '\u{fffe}' || c == '\u{ffff}') && !keep.contains(&c);
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !escaped(c) => out.push(c),
            c if u32::from(c) <= 0xff => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The width the summary fits: the terminal's, when stdout is one; else `COLUMNS`, when
/// set (`COLUMNS=80 tracer record … | head`); else none (a file gets the full width).
pub fn stdout_columns() -> Option<usize> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct given; it fails (-1) on a
    // descriptor that is not a terminal.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        return Some(usize::from(size.ws_col));
    }
    std::env::var("COLUMNS").ok()?.trim().parse().ok().filter(|&columns: &usize| columns > 0)
}

/// Prints `text` on stdout. A stdout that cannot take it (a reader that went away, as in
/// `| head`, or a full disk) is an error of one line, not a panic.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(escape_controls(text).as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

pub const TRACER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A profile read back from a file `tracer` wrote, with where it came from.
#[derive(Clone, Debug)]
pub struct SavedProfile {
    pub profile: Profile,
    pub provenance: Provenance,
    /// What the recording had that the file's format has no place for (pprof: who woke
    /// whom, the wait chains), for `tracer report` to say so.
    pub left_out: Vec<&'static str>,
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
    /// A device or a directory: `/dev/zero` would be read for ever.
    #[error("{}: not a regular file (give a profile tracer saved)", .0.display())]
    NotRegular(PathBuf),
    /// Empty.
    #[error("{}: empty file", .0.display())]
    Empty(PathBuf),
    /// Larger than any profile tracer writes, and reading it would take several times
    /// its size in memory.
    #[error(
        "{}: {} MiB, larger than the {} MiB a tracer profile can be read at",
        .path.display(), .bytes >> 20, MAX_SAVED_PROFILE_BYTES >> 20
    )]
    TooLarge { path: PathBuf, bytes: u64 },
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

/// The largest saved profile read: reading takes about eight times the file's size in
/// memory (a 375 MB JSON file took 2.9 GB), so this bounds it near 1 GiB. A recording of
/// 20,000 distinct stacks of 40 frames is about 60 MiB of JSON.
pub const MAX_SAVED_PROFILE_BYTES: u64 = 128 << 20;

/// Reads a profile `tracer` saved as JSON or pprof, telling them apart by content, from a
/// file or a pipe (`-`: standard input); not a device, which may never end.
pub fn read_saved(path: &Path) -> Result<SavedProfile, ReadError> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    let unreadable = |source| ReadError::Unreadable { path: path.to_path_buf(), source };
    // `-` is standard input, as `/dev/stdin` is.
    let opened = if path == Path::new("-") { Path::new("/dev/stdin") } else { path };
    let file = File::open(opened).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    // A file, or a pipe (`cat x.json | tracer report -`); not a device or a directory,
    // which would be read for ever or not at all.
    let piped = metadata.file_type().is_fifo() || metadata.file_type().is_socket();
    if !metadata.is_file() && !piped {
        return Err(ReadError::NotRegular(path.to_path_buf()));
    }
    if metadata.len() > MAX_SAVED_PROFILE_BYTES {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), bytes: metadata.len() });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or_default());
    // One byte past the most: a pipe says how much it holds only by running out.
    file.take(MAX_SAVED_PROFILE_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SAVED_PROFILE_BYTES {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), bytes: bytes.len() as u64 });
    }
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

/// An output file, checked before tracing starts so a bad path fails at once, and
/// written at the end to a temporary file beside it that is then renamed into place: an
/// earlier report stays whole until the new one is complete, even if the tracer is killed.
pub struct Output {
    pub path: PathBuf,
    pub format: Format,
}

impl Output {
    pub fn create(path: &Path) -> Result<Self, OutputError> {
        Self::create_as(path, Format::from_path(path)?)
    }

    /// Checks that `path` can be replaced: not a symbolic link, a regular file if it
    /// exists, and a temporary file can be created beside it (then removed).
    pub fn create_as(path: &Path, format: Format) -> Result<Self, OutputError> {
        let output = Self { path: path.to_path_buf(), format };
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(OutputError::Symlink(output.path));
            }
            Ok(metadata) if !metadata.is_file() => {
                return Err(OutputError::NotRegular(output.path));
            }
            _ => {}
        }
        let temporary = output.temporary_path();
        create_new(&temporary)
            .map_err(|source| OutputError::Unwritable { path: output.path.clone(), source })?;
        let _ = std::fs::remove_file(&temporary);
        Ok(output)
    }

    /// `.NAME.tracer-PID.tmp` in the output's directory: the same file system, so the
    /// rename is atomic; hidden, and named after this run.
    fn temporary_path(&self) -> PathBuf {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        self.path.with_file_name(format!(".{name}.tracer-{}.tmp", std::process::id()))
    }

    /// Writes `bytes_of`'s output to the temporary file, syncs it and renames it over the
    /// output; on failure the temporary file is removed and the output left as it was.
    fn replace_with(
        &self,
        bytes_of: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let temporary = self.temporary_path();
        let written = create_new(&temporary).map_err(anyhow::Error::new).and_then(|file| {
            let mut out = BufWriter::new(file);
            bytes_of(&mut out)?;
            let file = out.into_inner().map_err(|err| err.into_error())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            Ok(())
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }

    /// Writes `profile` in this output's format: `provenance` for the formats that carry it
    /// (JSON, pprof), `options` for the flamegraph's width and the text table's rows.
    pub fn write_with(
        &self,
        profile: &Profile,
        provenance: &Provenance,
        options: RenderOptions,
    ) -> anyhow::Result<()> {
        self.replace_with(|out| {
            match self.format {
                Format::Folded => folded::write_folded_weighted(profile, options.weight, out)?,
                Format::Svg => flamegraph::write_flamegraph(profile, options.weight, out)?,
                Format::ChainsFolded => {
                    for line in folded::chain_folded_lines(profile, options.weight) {
                        writeln!(out, "{line}")?;
                    }
                }
                Format::ChainsSvg => {
                    flamegraph::write_chains_flamegraph(profile, options.weight, out)?
                }
                Format::Pprof => pprof::write_pprof(profile, provenance, options.weight, out)?,
                Format::Json => json::write_json(profile, provenance, out)?,
                Format::TraceJson => trace_json::write_trace_json(profile, out)?,
                Format::Text => {
                    let summary = summary::render_summary(profile, options.top);
                    out.write_all(escape_controls(&summary).as_bytes())?
                }
            }
            Ok(())
        })
    }

    /// Writes raw bytes (a diff's reports).
    pub fn write_bytes(&self, bytes: &[u8]) -> anyhow::Result<()> {
        self.replace_with(|out| Ok(out.write_all(bytes)?))
    }
}

/// Creates `path`, failing if anything (a link planted there) exists.
fn create_new(path: &Path) -> std::io::Result<File> {
    File::options().write(true).create_new(true).open(path)
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
        assert_eq!(Format::from_path(Path::new("WAITS.SVG")).unwrap(), Format::Svg);
        assert_eq!(Format::from_path(Path::new("Waits.PB.GZ")).unwrap(), Format::Pprof);
        let chains = Format::from_path(Path::new("waits.chains.svg")).unwrap();
        assert_eq!(chains, Format::ChainsSvg);
        let chains = Format::from_path(Path::new("waits.chains.folded")).unwrap();
        assert_eq!(chains, Format::ChainsFolded);
        let trace = Format::from_path(Path::new("waits.trace.json")).unwrap();
        assert_eq!(trace, Format::TraceJson);
        let err = Format::from_path(Path::new("waits.gz")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "waits.gz: unknown output extension (use .folded, .svg, .pb.gz, .pprof, .json, .txt, \
             .chains.folded, .chains.svg or .trace.json)"
        );
    }

    fn temp_dir(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tracer-output-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_output_replaces_the_file_whole_or_not_at_all() {
        let dir = temp_dir("replace");
        let path = dir.join("waits.txt");
        std::fs::write(&path, "earlier").unwrap();
        let output = Output::create(&path).unwrap();
        // Checking the path leaves the earlier report and nothing beside it.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier");
        assert_eq!(names_in(&dir), ["waits.txt"]);

        let failed = output.replace_with(|out| {
            out.write_all(b"half")?;
            anyhow::bail!("the disk is full")
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier");
        assert_eq!(names_in(&dir), ["waits.txt"]);

        output.write_bytes(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(names_in(&dir), ["waits.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_and_special_files_are_refused_as_outputs() {
        let dir = temp_dir("refused");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = dir.join("waits.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(matches!(Output::create(&link), Err(OutputError::Symlink(_))));
        let directory = dir.join("waits.svg");
        std::fs::create_dir(&directory).unwrap();
        assert!(matches!(Output::create(&directory), Err(OutputError::NotRegular(_))));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn control_characters_are_written_out() {
        let name = "\x1b]0;pwn\x07<a>\u{9b}2J";
        assert_eq!(escape_name(name), "\\x1b]0;pwn\\x07<a>\\x9b2J");
        assert_eq!(escape_controls("a\tb\nc\rd\x7f"), "a\tb\nc\\x0dd\\x7f");
        assert_eq!(escape_name("a\nb"), "a\\x0ab");
        assert!(matches!(escape_controls("plain ünïcode"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn only_regular_files_and_pipes_are_read_as_profiles() {
        let err = read_saved(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular(_)), "{err}");
        let err = read_saved(Path::new("/")).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular(_)), "{err}");
        // A pipe: read to its end (what `cat x.json | tracer report -` hands).
        let mut fds = [0; 2];
        // SAFETY: pipe writes two new descriptors into the array given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both are ours, each owned once.
        let (reader, writer) = unsafe {
            use std::os::fd::FromRawFd as _;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        let profile = fixtures::fixture_profile();
        let mut json = Vec::new();
        json::write_json(&profile, &fixtures::fixture_provenance(), &mut json).expect("json");
        let feeder = std::thread::spawn(move || {
            use std::io::Write as _;
            let mut writer = writer;
            writer.write_all(&json).expect("write the pipe");
        });
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&reader));
        let saved = read_saved(Path::new(&path));
        feeder.join().expect("the feeder");
        assert_eq!(saved.expect("a profile read from a pipe").profile.pid, profile.pid);
    }

    #[test]
    fn failed_outputs_are_counted_in_one_line() {
        assert!(outputs_failed(0, 3).is_ok());
        assert_eq!(outputs_failed(2, 3).unwrap_err().to_string(), "2 of 3 reports not written");
    }
}
