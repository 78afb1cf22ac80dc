//! The recorder that catches the moment (`serve --trigger`): once a second the reading
//! thread looks at what its last read found blocked; when a condition holds (`threads>=N`
//! at one call site of one process, or a wait of `wait>=T`), it writes that process's
//! snapshot and the last window of its waits (JSON, SVG with the time chart, trace.json)
//! to the trigger directory, stamped with the time, at most once per cooldown.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    model::{Profile, ProfileKind, Sampling, StackKey},
    report::Output,
};

/// How often the conditions are looked at.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a process is watched before it may fire (or its window would be empty: a
/// daemon started beside a pile-up wrote a window of 2 ms and no read, and its cooldown
/// then kept the next firing 5 minutes off).
const FIRST_FIRING_AFTER: Duration = Duration::from_secs(2);

/// A condition that fires the trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// At least this many threads of one process blocked at one call site.
    Threads(u64),
    /// A thread blocked at least this long.
    Wait(Duration),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Threads(threads) => write!(f, "threads>={threads}"),
            Condition::Wait(wait) => {
                write!(
                    f,
                    "wait>={}",
                    crate::report::summary::format_duration(wait.as_nanos() as u64)
                )
            }
        }
    }
}

/// `threads>=N` or `wait>=DURATION` (`wait>=2s`, `wait>=500ms`).
pub fn parse_condition(text: &str) -> Result<Condition, String> {
    let spaceless: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let usage = || {
        format!("`{text}`: give threads>=N (threads blocked at one call site) or wait>=DURATION")
    };
    let (name, value) = spaceless.split_once(">=").ok_or_else(usage)?;
    match name {
        "threads" => match value.parse::<u64>() {
            Ok(threads @ 1..) => Ok(Condition::Threads(threads)),
            _ => Err(format!("`{text}`: threads>= takes a whole number of threads, 1 or more")),
        },
        "wait" => {
            let wait = crate::cli::parse_duration(value)?;
            if wait.is_zero() {
                return Err(format!("`{text}`: every wait is that long; give a longer one"));
            }
            Ok(Condition::Wait(wait))
        }
        _ => Err(usage()),
    }
}

/// What `serve --trigger` was given.
#[derive(Clone, Debug)]
pub struct TriggerConfig {
    pub conditions: Vec<Condition>,
    pub dir: PathBuf,
    pub cooldown: Duration,
    /// How much of the time before a firing its recording holds.
    pub window: Duration,
    /// The most firings whose files are kept (0: all).
    pub keep: usize,
}

/// The conditions, when they last fired for each process, and the firings whose files
/// are kept, oldest first.
pub struct Triggers {
    pub config: TriggerConfig,
    last_check: Option<Instant>,
    last_fired: HashMap<u32, Instant>,
    /// When each process was first looked at.
    first_looked: HashMap<u32, Instant>,
    written: VecDeque<PathBuf>,
}

/// What made a trigger fire, for the log and the files' names.
pub struct Firing {
    pub condition: Condition,
    pub what: String,
}

impl Triggers {
    pub fn new(config: TriggerConfig) -> Self {
        Self {
            config,
            last_check: None,
            last_fired: HashMap::new(),
            first_looked: HashMap::new(),
            written: VecDeque::new(),
        }
    }

    /// Notes a firing's files (their common `stem`), deleting the oldest firing's that
    /// this daemon wrote once more than `keep` are kept.
    pub fn keep_written(&mut self, stem: PathBuf) {
        // A stem written again (two firings within a second) holds the newer files.
        if self.config.keep == 0 || self.written.contains(&stem) {
            return;
        }
        self.written.push_back(stem);
        while self.written.len() > self.config.keep {
            let Some(oldest) = self.written.pop_front() else { break };
            for suffix in FIRING_FILES {
                let path = with_suffix(&oldest, suffix);
                if let Err(err) = std::fs::remove_file(&path)
                    && err.kind() != std::io::ErrorKind::NotFound
                {
                    log::warn!("cannot delete {}: {err}", path.display());
                }
            }
            log::info!(
                "deleted {}.* (--trigger-keep {}: the oldest firing's files)",
                oldest.display(),
                self.config.keep
            );
        }
    }

    /// Whether it is time to look (once per `CHECK_INTERVAL`).
    pub fn due(&mut self) -> bool {
        if self.last_check.is_some_and(|checked| checked.elapsed() < CHECK_INTERVAL) {
            return false;
        }
        self.last_check = Some(Instant::now());
        true
    }

    /// Whether process `pid` may not fire now: it fired within the cooldown, or it has
    /// been watched less than `FIRST_FIRING_AFTER` (or the window, if shorter).
    pub fn holding(&mut self, pid: u32) -> bool {
        let watched = self.first_looked.entry(pid).or_insert_with(Instant::now).elapsed();
        watched < FIRST_FIRING_AFTER.min(self.config.window)
            || self.last_fired.get(&pid).is_some_and(|fired| fired.elapsed() < self.config.cooldown)
    }

    pub fn fired(&mut self, pid: u32) {
        self.last_fired.insert(pid, Instant::now());
    }

    /// Forgets the firings of processes no longer read.
    pub fn forget_processes_except(&mut self, live: &[u32]) {
        self.last_fired.retain(|pid, _| live.contains(pid));
        self.first_looked.retain(|pid, _| live.contains(pid));
    }

    /// The first condition that one process's blocked waits meet, if any, from the raw
    /// stacks and ages (`blocked`) and, to count threads by call site, a snapshot named
    /// only when the process has enough blocked threads for it to matter (`name`).
    pub fn first_met<'a>(
        &self,
        blocked: impl Iterator<Item = (&'a StackKey, u64)>,
        name: impl FnOnce() -> Profile,
    ) -> Option<Firing> {
        let mut threads = 0u64;
        let mut oldest = 0u64;
        for (_, age_ns) in blocked {
            threads += 1;
            oldest = oldest.max(age_ns);
        }
        let mut snapshot = None;
        let mut name = Some(name);
        for &condition in &self.config.conditions {
            match condition {
                Condition::Wait(wait) if oldest >= wait.as_nanos() as u64 => {
                    let age = crate::report::summary::format_duration(oldest);
                    return Some(Firing { condition, what: format!("a thread blocked {age}") });
                }
                Condition::Threads(wanted) if threads >= wanted => {
                    let profile = snapshot.get_or_insert_with(|| name.take().map(|f| f()));
                    let Some(profile) = profile.as_ref() else { continue };
                    if let Some((site, count)) = busiest_site(profile)
                        && count >= wanted
                    {
                        return Some(Firing {
                            condition,
                            what: format!("{count} threads at {site}"),
                        });
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// The call site with the most threads blocked in a snapshot, and how many.
pub fn busiest_site(profile: &Profile) -> Option<(String, u64)> {
    let mut by_site: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for stack in &profile.stacks {
        by_site.entry(stack.call_site()).or_default().extend(&stack.stats.threads);
    }
    by_site
        .into_iter()
        .map(|(site, threads)| (site.to_string(), threads.len() as u64))
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
}

/// Makes the firings' directory if missing and checks that files can be made in it, at
/// the start: a firing that cannot be written is lost, and it comes when it matters.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let shown = crate::report::escape_name(&dir.to_string_lossy()).into_owned();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--trigger-dir {shown}: cannot make the directory"))?;
    let probe = tempfile_in(dir)
        .with_context(|| format!("--trigger-dir {shown}: cannot write files in it"))?;
    std::fs::remove_file(probe)?;
    Ok(())
}

/// An empty file made in `dir` (with a name nothing else uses), to be removed.
fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(format!(".tracer-check-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    Ok(path)
}

/// Writes a firing's files: the snapshot (`.snapshot.json`) and the last window as a
/// recording (`.window.json`, `.window.svg`, `.window.trace.json`), each name starting
/// with the UTC time, the process name and pid. Returns the files' common stem.
pub fn write_firing(
    dir: &Path,
    snapshot: &Profile,
    mut window: Profile,
    period: Duration,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stem = dir.join(format!(
        "{}-{}-{}",
        utc_stamp(SystemTime::now()),
        file_safe(&snapshot.comm),
        snapshot.pid
    ));
    window.kind = ProfileKind::Recording;
    // Its second 0 is the window's start, its duration before now.
    let start =
        SystemTime::now().checked_sub(window.duration).and_then(crate::pipeline::target::unix_ns);
    window.start_unix_ns = start;
    if let Some(timeline) = &mut window.timeline {
        timeline.origin_unix_ns = start;
    }
    let reads = (window.duration.as_nanos() / period.as_nanos().max(1)) as u64;
    window.sampling = Some(Sampling { period, reads });
    let [snapshot_json, window_json, window_svg, window_trace] =
        FIRING_FILES.map(|suffix| with_suffix(&stem, suffix));
    let snapshot_files = vec![Output::create(&snapshot_json)?];
    let window_files = vec![
        Output::create(&window_json)?,
        Output::create(&window_svg)?,
        Output::create(&window_trace)?,
    ];
    crate::report::write_outputs(snapshot_files, snapshot, 20)?;
    crate::report::write_outputs(window_files, &window, 20)?;
    Ok(stem)
}

/// The files of a firing, by what follows their common stem.
const FIRING_FILES: [&str; 4] =
    [".snapshot.json", ".window.json", ".window.svg", ".window.trace.json"];

/// `stem` with `suffix` after it (`…-app-4242` and `.window.svg`).
fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut path = stem.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

/// `20261201T190512Z`: sortable, and the same on every host.
pub fn utc_stamp(time: SystemTime) -> String {
    let seconds = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A process name as a file name's part: letters, digits, `.`, `_` and `-` kept.
fn file_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    safe.trim_start_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_say_what_is_wrong() {
        assert_eq!(parse_condition("threads>=50"), Ok(Condition::Threads(50)));
        assert_eq!(parse_condition(" threads >= 8 "), Ok(Condition::Threads(8)));
        assert_eq!(parse_condition("wait>=2s"), Ok(Condition::Wait(Duration::from_secs(2))));
        assert_eq!(Condition::Wait(Duration::from_millis(500)).to_string(), "wait>=500.0ms");
        assert_eq!(Condition::Threads(50).to_string(), "threads>=50");
        assert!(parse_condition("threads>=0").unwrap_err().contains("1 or more"));
        assert!(parse_condition("threads>50").unwrap_err().contains("give threads>=N"));
        assert!(parse_condition("cpu>=5").unwrap_err().contains("give threads>=N"));
        assert!(parse_condition("wait>=soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn stamps_are_utc_and_sortable() {
        let at = |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        assert_eq!(utc_stamp(at(0)), "19700101T000000Z");
        // 2026-12-01 19:05:12 UTC.
        assert_eq!(utc_stamp(at(1_796_151_912)), "20261201T190512Z");
        // A leap day.
        assert_eq!(utc_stamp(at(951_782_400)), "20000229T000000Z");
    }

    /// A process first looked at may not fire until it has been watched a while (its
    /// window empty otherwise), then not again within the cooldown.
    #[test]
    fn a_process_fires_once_watched_and_not_within_the_cooldown() {
        let window = Duration::from_millis(50);
        let mut triggers = Triggers::new(TriggerConfig {
            conditions: vec![Condition::Threads(1)],
            dir: PathBuf::new(),
            cooldown: Duration::from_secs(60),
            window,
            keep: 0,
        });
        assert!(triggers.holding(42));
        std::thread::sleep(window);
        assert!(!triggers.holding(42));
        triggers.fired(42);
        assert!(triggers.holding(42));
        // Another process: watched from its own first look.
        assert!(triggers.holding(7));
    }

    #[test]
    fn file_names_keep_only_safe_characters() {
        assert_eq!(file_safe("c-pileup"), "c-pileup");
        assert_eq!(file_safe("../etc/x y"), "_etc_x_y");
        assert_eq!(file_safe(".hidden"), "hidden");
    }

    #[test]
    fn past_the_firings_kept_the_oldest_files_written_go() {
        let dir = std::env::temp_dir().join(format!("tracer-trigger-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let mut triggers = Triggers::new(TriggerConfig {
            conditions: vec![Condition::Threads(1)],
            dir: dir.clone(),
            cooldown: Duration::from_secs(60),
            window: Duration::from_secs(30),
            keep: 2,
        });
        // Someone else's file in the directory is never touched.
        let other = dir.join("notes.txt");
        std::fs::write(&other, "mine").expect("write");
        let stems: Vec<PathBuf> = (0..3).map(|n| dir.join(format!("stamp{n}-app-42"))).collect();
        for stem in &stems {
            for suffix in FIRING_FILES {
                std::fs::write(with_suffix(stem, suffix), "{}").expect("write");
            }
            triggers.keep_written(stem.clone());
        }
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&dir).expect("clean up");
        let mut expected = vec!["notes.txt".to_string()];
        for n in 1..3 {
            expected.extend(FIRING_FILES.map(|suffix| format!("stamp{n}-app-42{suffix}")));
        }
        expected.sort();
        assert_eq!(left, expected);
    }

    #[test]
    fn threads_are_counted_by_call_site_only_when_enough_are_blocked() {
        let triggers = Triggers::new(TriggerConfig {
            conditions: vec![Condition::Threads(3), Condition::Wait(Duration::from_secs(10))],
            dir: PathBuf::new(),
            cooldown: Duration::from_secs(60),
            window: Duration::from_secs(30),
            keep: 100,
        });
        let key = StackKey {
            addresses: vec![0x10],
            kind: tracer_common::WaitKind::Futex,
            object: crate::model::WaitObject::None,
            truncated: false,
            in_progress: true,
        };
        // Two blocked threads: fewer than 3 in all, so no snapshot is named.
        let two = [(&key, 1_000), (&key, 2_000)];
        let named = std::cell::Cell::new(false);
        let fired = triggers.first_met(two.into_iter(), || {
            named.set(true);
            Profile::new(ProfileKind::Snapshot, 1, "app".into())
        });
        assert!(fired.is_none() && !named.get());
        // One thread blocked 11 s: the wait condition.
        let old = [(&key, 11_000_000_000)];
        let fired = triggers.first_met(old.into_iter(), || unreachable!()).unwrap();
        assert_eq!(fired.condition, Condition::Wait(Duration::from_secs(10)));
    }
}
