//! The slow, CPU-bound work of the endpoints, on one thread of its own: unwinding the
//! threads blocked now, and symbolizing aggregates into profiles. Off the runtime, so
//! the ring buffers keep being drained while it runs, and one at a time, so many
//! requests cannot multiply the CPU it takes. (blazesym's symbolizer cannot move
//! between threads, so it lives here for good.)

use std::time::Instant;

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};

use crate::{
    chains::{self, ChainFacts},
    model::{Profile, WaitAggregate},
    objects::WaitObjects,
    pipeline::{self, Namer},
    stacks::{MapRefresh, ProcessImage, ProcessUnwinder},
    threads::blocked_now::{KnownWaitStarts, SavedFramePointers, collect_blocked_threads},
};

/// Jobs waiting for the worker beyond the one it runs. Snapshots past that are refused
/// (503); symbolization jobs wait for a slot, as their callers are few and bounded (the
/// open windows, the metrics fold).
const QUEUE_CAPACITY: usize = 8;

/// Why the worker could not build a profile.
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
        /// For unwinding the threads blocked now.
        unwind_image: ProcessImage,
        /// For symbolizing (refreshed when a stack reaches code mapped since).
        symbol_image: ProcessImage,
    },
    /// Nothing attached: drop the process's image and caches.
    Detach,
    Symbolize {
        generation: u64,
        // Boxed: an aggregate (its timeline recorder) is most of a job's size.
        aggregate: Box<WaitAggregate>,
        base: Profile,
        reply: oneshot::Sender<Result<Profile, WorkerError>>,
    },
    BlockedNow {
        generation: u64,
        base: Profile,
        known_starts: KnownWaitStarts,
        frame_pointers: SavedFramePointers,
        chains: ChainsWanted,
        reply: oneshot::Sender<Result<Profile, WorkerError>>,
    },
}

/// Whether a snapshot's wait chains read their facts from the live system (peers
/// behind endpoints, lock holders): for a report someone reads, not for /metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainsWanted {
    WithFacts,
    No,
}

/// The handle the rest of `serve` sends jobs through.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new().name("tracer-symbolize".into()).spawn(move || run(queue))?;
        Ok(Self { jobs })
    }

    /// Control jobs wait for room in the queue (jobs take milliseconds).
    pub async fn attach(
        &self,
        generation: u64,
        pid: u32,
        unwind_image: ProcessImage,
        symbol_image: ProcessImage,
    ) {
        let _ = self.jobs.send(Job::Attach { generation, pid, unwind_image, symbol_image }).await;
    }

    pub async fn detach(&self) {
        let _ = self.jobs.send(Job::Detach).await;
    }

    /// Names the stacks of `aggregate` (waits of attachment `generation`) and builds the
    /// profile on `base`. Waits for room in the queue: the waits would be lost otherwise.
    pub async fn symbolize(
        &self,
        generation: u64,
        aggregate: WaitAggregate,
        base: Profile,
    ) -> Result<Profile, WorkerError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Symbolize { generation, aggregate: Box::new(aggregate), base, reply })
            .await
            .map_err(|_| WorkerError::Stopped)?;
        answer.await.map_err(|_| WorkerError::Stopped)?
    }

    /// The threads blocked now, unwound and symbolized: a snapshot profile on `base`.
    /// Refused (`Busy`) when the queue is full: a snapshot can be asked for again.
    pub async fn blocked_now(
        &self,
        generation: u64,
        base: Profile,
        known_starts: KnownWaitStarts,
        frame_pointers: SavedFramePointers,
        chains: ChainsWanted,
    ) -> Result<Profile, WorkerError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::BlockedNow { generation, base, known_starts, frame_pointers, chains, reply };
        self.jobs.try_send(job).map_err(|err| match err {
            TrySendError::Full(_) => WorkerError::Busy,
            TrySendError::Closed(_) => WorkerError::Stopped,
        })?;
        answer.await.map_err(|_| WorkerError::Stopped)?
    }
}

/// What the worker keeps for the attached process.
struct Attachment {
    generation: u64,
    pid: u32,
    /// Its own memory-map snapshot and unwinder (the drain task has another).
    unwinder: ProcessUnwinder,
    /// The memory map stacks are symbolized against.
    image: ProcessImage,
    map_refresh: MapRefresh,
    objects: WaitObjects,
    namer: Namer,
}

fn run(mut queue: mpsc::Receiver<Job>) {
    let mut attached: Option<Attachment> = None;
    while let Some(job) = queue.blocking_recv() {
        match job {
            Job::Attach { generation, pid, unwind_image, symbol_image } => {
                attached = Some(Attachment {
                    generation,
                    pid,
                    unwinder: ProcessUnwinder::new(pid, unwind_image),
                    image: symbol_image,
                    map_refresh: MapRefresh::default(),
                    objects: WaitObjects::new(pid),
                    namer: Namer::default(),
                });
            }
            Job::Detach => attached = None,
            Job::Symbolize { generation, aggregate, base, reply } => {
                let profile = match attached.as_mut() {
                    Some(attachment) if attachment.generation == generation => {
                        Ok(symbolize(attachment, *aggregate, base))
                    }
                    _ => Err(WorkerError::Stale),
                };
                let _ = reply.send(profile);
            }
            Job::BlockedNow { generation, base, known_starts, frame_pointers, chains, reply } => {
                let profile = match attached.as_mut() {
                    Some(attachment) if attachment.generation == generation => {
                        blocked_now(attachment, base, &known_starts, &frame_pointers, chains)
                    }
                    _ => Err(WorkerError::Stale),
                };
                let _ = reply.send(profile);
            }
        }
    }
}

/// A window's profile, with the chains its stacks and wakers make (the facts only the
/// live system has, the peers and lock holders, are read for snapshots: a window's
/// waits may be long over).
fn symbolize(attachment: &mut Attachment, aggregate: WaitAggregate, base: Profile) -> Profile {
    refresh_image_for(attachment, &aggregate);
    let Attachment { image, namer, .. } = attachment;
    let mut profile = namer.profile(aggregate, base, image);
    profile.chains = chains::build(&profile, &ChainFacts::default());
    profile
}

/// Picks up libraries mapped since the image was taken (dlopen after attach) when a
/// stack of `aggregate` reaches outside every known module; at most once a second.
fn refresh_image_for(attachment: &mut Attachment, aggregate: &WaitAggregate) {
    let Attachment { pid, image, map_refresh, .. } = attachment;
    let outside = |addresses: &[u64]| {
        addresses.iter().any(|&address| {
            !crate::python::is_python_frame_address(address) && image.module_for(address).is_none()
        })
    };
    let reaches_outside = aggregate.stacks.keys().any(|key| outside(&key.addresses))
        || aggregate
            .wakers
            .values()
            .flat_map(|by_waker| by_waker.keys())
            .any(|waker| outside(waker));
    if !reaches_outside {
        return;
    }
    map_refresh.refresh(*pid, image);
}

fn blocked_now(
    attachment: &mut Attachment,
    mut base: Profile,
    known_starts: &KnownWaitStarts,
    frame_pointers: &SavedFramePointers,
    chains_wanted: ChainsWanted,
) -> Result<Profile, WorkerError> {
    let started = Instant::now();
    let pid = attachment.pid;
    let truncated_before = attachment.unwinder.truncated_unwinds;
    let mut aggregate = WaitAggregate::default();
    base.thread_counts = collect_blocked_threads(
        pid,
        &mut attachment.unwinder,
        known_starts,
        frame_pointers,
        &mut attachment.objects,
        &mut aggregate,
    )
    .map_err(|source| WorkerError::Threads { pid, source })?;
    base.counts.unwind_truncated = attachment.unwinder.truncated_unwinds - truncated_before;
    // A CPython process's asyncio tasks pending now.
    let tasks = pipeline::pending_task_stacks(&mut attachment.unwinder, &mut attachment.objects);
    base.endpoint_states = std::mem::take(&mut attachment.objects.endpoint_states);
    let profile = symbolize(attachment, aggregate, base);
    let mut profile = pipeline::with_stacks(profile, tasks);
    profile.duration = started.elapsed();
    if chains_wanted == ChainsWanted::No {
        attachment.objects.endpoint_sockets.clear();
        profile.chains.clear();
        return Ok(profile);
    }
    // This snapshot's sockets only: the next one resolves its own.
    let sockets = std::mem::take(&mut attachment.objects.endpoint_sockets);
    let facts = chains::live::gather(&profile, &sockets, &mut attachment.unwinder, frame_pointers);
    chains::add_to(&mut profile, &facts);
    crate::pipeline::add_backed_up_sockets(&mut profile, frame_pointers);
    Ok(profile)
}
