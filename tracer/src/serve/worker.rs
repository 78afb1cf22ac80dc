//! The slow, CPU-bound work of the endpoints, on one thread of its own: unwinding the
//! threads blocked now, and symbolizing aggregates into profiles. Off the runtime, so
//! the ring buffers keep being drained while it runs, and one at a time, so many
//! requests cannot multiply the CPU it takes. (blazesym's symbolizer cannot move
//! between threads, so it lives here for good.)

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tokio::sync::oneshot;

use crate::{
    aggregate::{Profile, WaitAggregate},
    blocked_now::{KnownWaitStarts, SavedFramePointers, collect_blocked_threads},
    locks::LockNamer,
    stacks::{ProcessImage, StackSymbolizer, StackWalker},
    wait_targets::WaitTargets,
};

/// Jobs waiting for the worker beyond the one it runs: past that, requests are
/// refused (503) rather than queued without bound.
const QUEUE_CAPACITY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Too many jobs queued.
    #[error("busy: too many profiles being built; retry later")]
    Busy,
    /// The target changed (or is gone) since the job's data was taken.
    #[error("the traced process changed while the profile was built; retry")]
    Stale,
    /// The worker thread is gone (it panicked).
    #[error("the symbolizer thread stopped")]
    Stopped,
    /// The target's threads could not be read.
    #[error("cannot read the threads of pid {pid}")]
    Threads {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

enum Job {
    /// From now on, jobs are about this process (of this attachment `generation`).
    Attach {
        generation: u64,
        pid: u32,
        image: ProcessImage,
    },
    /// Nothing attached: drop the process's image and caches.
    Detach,
    Symbolize {
        generation: u64,
        aggregate: WaitAggregate,
        base: Profile,
        reply: oneshot::Sender<Result<Profile, WorkerError>>,
    },
    BlockedNow {
        generation: u64,
        base: Profile,
        known_starts: KnownWaitStarts,
        frame_pointers: SavedFramePointers,
        reply: oneshot::Sender<Result<Profile, WorkerError>>,
    },
}

/// The handle the rest of `serve` sends jobs through.
pub struct Worker {
    jobs: SyncSender<Job>,
}

impl Worker {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("tracer-symbolize".into())
            .spawn(move || run(queue))?;
        Ok(Self { jobs })
    }

    /// Control jobs wait for room in the queue (jobs take milliseconds).
    pub fn attach(&self, generation: u64, pid: u32, image: ProcessImage) {
        let _ = self.jobs.send(Job::Attach {
            generation,
            pid,
            image,
        });
    }

    pub fn detach(&self) {
        let _ = self.jobs.send(Job::Detach);
    }

    /// Names the stacks of `aggregate` (waits of attachment `generation`) and builds the
    /// profile on `base`.
    pub async fn symbolize(
        &self,
        generation: u64,
        aggregate: WaitAggregate,
        base: Profile,
    ) -> Result<Profile, WorkerError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Symbolize {
            generation,
            aggregate,
            base,
            reply,
        })?;
        answer.await.map_err(|_| WorkerError::Stopped)?
    }

    /// The threads blocked now, unwound and symbolized: a snapshot profile on `base`.
    pub async fn blocked_now(
        &self,
        generation: u64,
        base: Profile,
        known_starts: KnownWaitStarts,
        frame_pointers: SavedFramePointers,
    ) -> Result<Profile, WorkerError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::BlockedNow {
            generation,
            base,
            known_starts,
            frame_pointers,
            reply,
        })?;
        answer.await.map_err(|_| WorkerError::Stopped)?
    }

    fn submit(&self, job: Job) -> Result<(), WorkerError> {
        self.jobs.try_send(job).map_err(|err| match err {
            TrySendError::Full(_) => WorkerError::Busy,
            TrySendError::Disconnected(_) => WorkerError::Stopped,
        })
    }
}

/// What the worker keeps for the attached process.
struct Attachment {
    generation: u64,
    pid: u32,
    /// Its own memory-map snapshot and unwinder (the drain task has another).
    walker: StackWalker,
    targets: WaitTargets,
    symbolizer: StackSymbolizer,
    locks: LockNamer,
}

fn run(queue: Receiver<Job>) {
    let mut attached: Option<Attachment> = None;
    while let Ok(job) = queue.recv() {
        match job {
            Job::Attach {
                generation,
                pid,
                image,
            } => {
                attached = Some(Attachment {
                    generation,
                    pid,
                    walker: StackWalker::new(pid, image),
                    targets: WaitTargets::new(pid),
                    symbolizer: StackSymbolizer::new(),
                    locks: LockNamer::new(),
                });
            }
            Job::Detach => attached = None,
            Job::Symbolize {
                generation,
                aggregate,
                base,
                reply,
            } => {
                let profile = match attached.as_mut() {
                    Some(attachment) if attachment.generation == generation => {
                        Ok(symbolize(attachment, aggregate, base))
                    }
                    _ => Err(WorkerError::Stale),
                };
                let _ = reply.send(profile);
            }
            Job::BlockedNow {
                generation,
                base,
                known_starts,
                frame_pointers,
                reply,
            } => {
                let profile = match attached.as_mut() {
                    Some(attachment) if attachment.generation == generation => {
                        blocked_now(attachment, base, &known_starts, &frame_pointers)
                    }
                    _ => Err(WorkerError::Stale),
                };
                let _ = reply.send(profile);
            }
        }
    }
}

fn symbolize(attachment: &mut Attachment, aggregate: WaitAggregate, base: Profile) -> Profile {
    let Attachment {
        walker,
        symbolizer,
        locks,
        ..
    } = attachment;
    let unknown_before = symbolizer.unknown_addresses;
    let mut profile = aggregate.into_profile(base, walker.image(), symbolizer, locks);
    profile.counts.unknown_symbols = symbolizer.unknown_addresses - unknown_before;
    profile
}

fn blocked_now(
    attachment: &mut Attachment,
    mut base: Profile,
    known_starts: &KnownWaitStarts,
    frame_pointers: &SavedFramePointers,
) -> Result<Profile, WorkerError> {
    let started = std::time::Instant::now();
    let pid = attachment.pid;
    let truncated_before = attachment.walker.truncated_walks;
    let mut aggregate = WaitAggregate::default();
    base.thread_counts = collect_blocked_threads(
        pid,
        &mut attachment.walker,
        known_starts,
        frame_pointers,
        &mut attachment.targets,
        &mut aggregate,
    )
    .map_err(|source| WorkerError::Threads { pid, source })?;
    base.counts.unwind_truncated = attachment.walker.truncated_walks - truncated_before;
    base.endpoint_states = std::mem::take(&mut attachment.targets.endpoint_states);
    let mut profile = symbolize(attachment, aggregate, base);
    profile.duration = started.elapsed();
    Ok(profile)
}
