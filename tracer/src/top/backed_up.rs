//! `top`'s backed-up sockets, read off its loop: a read lists every socket of the
//! processes, dumps their namespaces' socket tables (a tenth of a second on a host of
//! tens of thousands of connections) and may look again 100 ms later, which on the loop
//! would hold the screen, the keys and the reads still that long.

use std::{
    sync::mpsc::{self, Receiver, TryRecvError},
    time::{Duration, Instant},
};

use crate::{
    model::{BackedUp, ProcessTag},
    pipeline::members::Member,
};

/// How often the sockets are read again: a read lists every descriptor and dumps the TCP
/// table, too much to do at every refresh of many processes.
pub const READ_EVERY: Duration = Duration::from_secs(5);

/// The processes' backed-up sockets as last read, and how many processes' sockets could
/// not all be read.
pub type BackedUpRead = (BackedUp, u64);

/// Reads the sockets on a thread of their own, one read at a time.
#[derive(Default)]
pub struct BackedUpReader {
    /// When the last read began, and of which processes.
    started: Option<(Instant, Vec<u32>)>,
    /// The read under way: of which processes, and where its answer comes.
    under_way: Option<(Vec<u32>, Receiver<BackedUpRead>)>,
    /// What the last read of the processes watched now found.
    latest: BackedUpRead,
}

impl BackedUpReader {
    /// The sockets of `members` as last read. A read begins every `READ_EVERY`, or when
    /// the processes change (one gone, a restart: the sockets read of the others are
    /// dropped, the new read's shown when it comes).
    pub fn latest(&mut self, members: &[Member]) -> BackedUpRead {
        let pids: Vec<u32> = members.iter().map(|member| member.target.pid).collect();
        if let Some((of, answer)) = &self.under_way {
            match answer.try_recv() {
                Ok(read) => {
                    if *of == pids {
                        self.latest = read;
                    }
                    self.under_way = None;
                }
                Err(TryRecvError::Empty) => {}
                // The read failed (a panic, said on stderr): the next is due as usual.
                Err(TryRecvError::Disconnected) => self.under_way = None,
            }
        }
        let changed = self.started.as_ref().is_some_and(|(_, of)| *of != pids);
        if changed {
            self.latest = BackedUpRead::default();
        }
        let due = self.started.as_ref().is_none_or(|(at, _)| at.elapsed() >= READ_EVERY);
        if (due || changed) && self.under_way.is_none() {
            self.start(members, pids);
        }
        self.latest.clone()
    }

    fn start(&mut self, members: &[Member], pids: Vec<u32>) {
        let processes: Vec<(u32, ProcessTag)> = members
            .iter()
            .map(|member| (crate::pipeline::target::live_thread(member.target.pid), member.tag()))
            .collect();
        let (send, answer) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("backed-up".into())
            .spawn(move || send.send(read(&processes)));
        match spawned {
            Ok(_) => self.under_way = Some((pids.clone(), answer)),
            Err(error) => log::warn!("cannot start a thread to read the sockets: {error}"),
        }
        self.started = Some((Instant::now(), pids));
    }
}

/// The backed-up sockets of `processes` (a live thread's id, and the process), each
/// tagged with its process where there are several.
fn read(processes: &[(u32, ProcessTag)]) -> BackedUpRead {
    let pids: Vec<u32> = processes.iter().map(|&(pid, _)| pid).collect();
    let scans = crate::objects::sockets::backed_up::scan_processes(&pids);
    let mut all = BackedUp::default();
    let mut unreadable = 0;
    for ((_, tag), (sockets, failed)) in processes.iter().zip(scans) {
        all.join(BackedUp::of(sockets), tag);
        // Its descriptors or its socket tables unreadable: said in the header.
        unreadable += u64::from(failed.is_some());
    }
    // One process's: no need to name it.
    if processes.len() == 1 {
        for socket in &mut all.sockets {
            socket.process = None;
        }
    }
    (all, unreadable)
}
