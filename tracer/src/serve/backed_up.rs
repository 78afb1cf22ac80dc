//! The backed-up sockets for `/metrics`: each process's sockets read
//! (`objects::sockets::backed_up`) at most every `READ_EVERY`, off the async threads (a
//! read lists descriptors, dumps socket tables and may wait 100 ms on a Unix socket), and
//! shared by the scrapes in between (a process that joins meanwhile waits for the next).
//! An event-driven server whose client stopped reading shows here, where no wait series
//! does.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::model::{Backlog, ProcessTag};

/// How long a read serves the scrapes: Prometheus scrapes every 15 s or so, and a read of
/// many processes' sockets is not free.
const READ_EVERY: Duration = Duration::from_secs(5);

/// Sockets and bytes by process and way.
type SeriesMap = BTreeMap<(Option<ProcessTag>, Backlog), (u64, u64)>;

/// The backed-up sockets of the processes read, by process and way.
#[derive(Debug, Default)]
pub struct BackedUpSeries {
    /// (process, way) → (sockets, bytes queued), of those whose data stopped moving. The
    /// process is None for the one a `serve --pid` traces. Only ways with sockets are here.
    pub series: SeriesMap,
    /// Likewise of the connections whose data still moves, held back by a slow reader
    /// (a gauge of their own: an alert on a stopped peer is not to fire for them).
    pub slow_readers: SeriesMap,
    /// Likewise of the requests awaiting their replies (no bytes queued: their gauge of
    /// bytes is left out), a gauge of their own too.
    pub awaiting: SeriesMap,
    /// Processes whose sockets could not all be read at the last read.
    pub unreadable: u64,
}

impl BackedUpSeries {
    /// Reads each of `processes` (its pid, and its tag where the daemon traces several).
    fn read(processes: &[(u32, Option<ProcessTag>)]) -> Self {
        let mut read = Self::default();
        let pids: Vec<u32> =
            processes.iter().map(|&(pid, _)| crate::pipeline::target::live_thread(pid)).collect();
        let scans = crate::objects::sockets::backed_up::scan_processes(&pids);
        for ((pid, tag), (sockets, failed)) in processes.iter().zip(scans) {
            if let Some(failed) = failed {
                log::debug!("backed-up sockets of pid {pid}: {failed}");
                read.unreadable += 1;
            }
            for socket in sockets {
                let series = match (socket.backlog, socket.window_limited_percent) {
                    (Backlog::Awaiting, _) => &mut read.awaiting,
                    (_, Some(_)) => &mut read.slow_readers,
                    (_, None) => &mut read.series,
                };
                let (count, bytes) = series.entry((tag.clone(), socket.backlog)).or_default();
                *count += 1;
                *bytes += socket.queued_bytes;
            }
        }
        read
    }
}

/// The last read: when, and of which attachment (`serve --pid`'s generation; 0 for a
/// daemon of several).
type LastRead = (Instant, u64, Arc<BackedUpSeries>);

/// The reads for one daemon; locked across reading, so concurrent scrapes share one.
#[derive(Default)]
pub struct BackedUpReads {
    last: tokio::sync::Mutex<Option<LastRead>>,
}

impl BackedUpReads {
    /// The series of `processes` (of attachment `generation`): the last read's while it
    /// is fresh and of the same attachment, without the processes gone since (one come
    /// since waits for the next read), else a new one.
    pub async fn series(
        &self,
        processes: Vec<(u32, Option<ProcessTag>)>,
        generation: u64,
    ) -> Arc<BackedUpSeries> {
        let mut last = self.last.lock().await;
        if let Some((taken, of, series)) = last.as_ref()
            && taken.elapsed() < READ_EVERY
            && *of == generation
        {
            let live = |tag: &Option<ProcessTag>| {
                tag.as_ref().is_none_or(|tag| processes.iter().any(|(pid, _)| *pid == tag.pid))
            };
            let all_live = |series: &SeriesMap| series.keys().all(|(tag, _)| live(tag));
            let every = [&series.series, &series.slow_readers, &series.awaiting];
            if every.into_iter().all(all_live) {
                return Arc::clone(series);
            }
            let kept = |series: &SeriesMap| -> SeriesMap {
                let live_ones = series.iter().filter(|((tag, _), _)| live(tag));
                live_ones.map(|(key, &value)| (key.clone(), value)).collect()
            };
            let series = BackedUpSeries {
                series: kept(&series.series),
                slow_readers: kept(&series.slow_readers),
                awaiting: kept(&series.awaiting),
                unreadable: series.unreadable,
            };
            return Arc::new(series);
        }
        let count = processes.len() as u64;
        let series = tokio::task::spawn_blocking(move || BackedUpSeries::read(&processes))
            .await
            .unwrap_or_else(|join| {
                log::warn!("the read of backed-up sockets failed: {join}");
                // Every process unread, said as such.
                BackedUpSeries { unreadable: count, ..BackedUpSeries::default() }
            });
        let series = Arc::new(series);
        *last = Some((Instant::now(), generation, Arc::clone(&series)));
        series
    }
}
