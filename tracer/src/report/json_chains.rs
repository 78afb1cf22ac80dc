//! The wait chains in the JSON report (schema `tracer-profile/2`): mirror structs of
//! `chains::WaitChain`, converted both ways, each chain with its line as the summary
//! prints it.

use serde::{Deserialize, Serialize};

use crate::{
    chains::{
        ChainHop, ChainSite, PeerProcess, Terminal, ThreadNow, ThreadState, WaitChain, chain_line,
    },
    report::{
        json::{JsonProcess, parse_wait_kind},
        summary::format_duration,
    },
};

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonChain {
    /// The chain as the summary's WAIT CHAINS section prints it.
    pub line: String,
    /// In a profile of several processes, whose chain it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<JsonProcess>,
    /// Where the threads wait.
    pub start: JsonChainSite,
    /// Threads (or goroutines) at the start, and their blocked time there.
    pub threads: u64,
    pub blocked_ns: u64,
    /// From the start on: who woke the waits, and where those wakers were blocked.
    pub hops: Vec<JsonChainHop>,
    pub terminal: JsonTerminal,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonChainSite {
    pub site: String,
    pub kind: String,
    pub object: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonChainHop {
    pub waker: String,
    pub waker_threads: Vec<u64>,
    pub blocked_ns: u64,
    pub at: JsonChainSite,
}

/// `type` says which: `endpoint`, `lock_holder`, `thread`, `peers` or `unknown`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JsonTerminal {
    Endpoint {
        endpoint: String,
        state: Option<String>,
        peer: Option<JsonPeer>,
    },
    LockHolder {
        thread: JsonThreadNow,
    },
    Thread {
        thread: JsonThreadNow,
    },
    /// Woken by one another: `threads` of those waiting at the site woke them.
    Peers {
        threads: u64,
    },
    Unknown {
        reason: String,
    },
    /// A type of end a later tracer writes: read as unknown, not refused.
    #[serde(other)]
    Unrecognized,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonPeer {
    pub pid: u32,
    pub comm: String,
    /// What its first threads do (at most 16 are read), and how many it has.
    pub threads: Vec<JsonThreadNow>,
    #[serde(default)]
    pub thread_count: u64,
    /// Its threads blocked in a call on its end of the connection (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on_socket: Option<Vec<u32>>,
    /// The address the connection reaches it at, when address translation rewrote the
    /// endpoint's (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<String>,
    /// The processes behind the endpoint's other connections, by pid (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_pids: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JsonThreadNow {
    pub tid: u32,
    pub name: String,
    /// `running`, `blocked` or `unknown`.
    pub state: String,
    /// When blocked: the syscall, and the call site where its stack could be named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_site: Option<String>,
    /// When blocked: its functions as they are now, root first (empty when unknown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
}

pub fn json_chains(chains: &[WaitChain]) -> Vec<JsonChain> {
    chains
        .iter()
        .map(|chain| JsonChain {
            line: chain_line(chain, format_duration),
            process: chain.process.as_ref().map(super::json::json_process),
            start: json_site(&chain.start),
            threads: chain.threads,
            blocked_ns: chain.blocked_ns,
            hops: chain
                .hops
                .iter()
                .map(|hop| JsonChainHop {
                    waker: hop.waker.clone(),
                    waker_threads: hop.waker_threads.clone(),
                    blocked_ns: hop.blocked_ns,
                    at: json_site(&hop.at),
                })
                .collect(),
            terminal: match &chain.terminal {
                Terminal::Endpoint { endpoint, state, peer } => JsonTerminal::Endpoint {
                    endpoint: endpoint.clone(),
                    state: state.clone(),
                    peer: peer.as_ref().map(|peer| JsonPeer {
                        pid: peer.pid,
                        comm: peer.comm.clone(),
                        threads: peer.threads.iter().map(json_thread).collect(),
                        thread_count: peer.thread_count,
                        waiting_on_socket: peer.waiting_on_socket.clone(),
                        reached_at: peer.reached_at.clone(),
                        other_pids: peer.other_pids.clone(),
                    }),
                },
                Terminal::LockHolder(thread) => {
                    JsonTerminal::LockHolder { thread: json_thread(thread) }
                }
                Terminal::Thread(thread) => JsonTerminal::Thread { thread: json_thread(thread) },
                Terminal::Peers(threads) => JsonTerminal::Peers { threads: *threads },
                Terminal::Unknown(reason) => JsonTerminal::Unknown { reason: reason.clone() },
            },
        })
        .collect()
}

fn json_site(site: &ChainSite) -> JsonChainSite {
    JsonChainSite {
        site: site.site.clone(),
        kind: site.kind.name().to_owned(),
        object: site.object.clone(),
    }
}

fn json_thread(thread: &ThreadNow) -> JsonThreadNow {
    let (state, syscall, call_site, stack) = match &thread.state {
        ThreadState::Running => ("running", None, None, Vec::new()),
        ThreadState::Blocked { syscall, call_site, stack } => {
            ("blocked", Some(syscall.clone()), call_site.clone(), stack.clone())
        }
        ThreadState::Unknown => ("unknown", None, None, Vec::new()),
    };
    let (tid, name, state) = (thread.tid, thread.name.clone(), state.to_owned());
    JsonThreadNow { tid, name, state, syscall, call_site, stack }
}

/// The chains of a saved profile; `Err` names what is malformed.
pub fn wait_chains(chains: Vec<JsonChain>) -> Result<Vec<WaitChain>, String> {
    chains
        .into_iter()
        .enumerate()
        .map(|(index, chain)| wait_chain(chain).map_err(|what| format!("chain {index}: {what}")))
        .collect()
}

fn wait_chain(chain: JsonChain) -> Result<WaitChain, String> {
    let JsonChain { line: _, process, start, threads, blocked_ns, hops, terminal } = chain;
    let process = process.map(super::json::process_tag);
    let hops = hops
        .into_iter()
        .map(|JsonChainHop { waker, waker_threads, blocked_ns, at }| {
            Ok(ChainHop { waker, waker_threads, blocked_ns, at: chain_site(at)? })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let terminal = match terminal {
        JsonTerminal::Endpoint { endpoint, state, peer } => Terminal::Endpoint {
            endpoint,
            state,
            peer: peer
                .map(
                    |JsonPeer {
                         pid,
                         comm,
                         threads,
                         thread_count,
                         waiting_on_socket,
                         reached_at,
                         other_pids,
                     }| {
                        let threads =
                            threads.into_iter().map(thread_now).collect::<Result<_, _>>()?;
                        Ok::<_, String>(PeerProcess {
                            pid,
                            comm,
                            threads,
                            thread_count,
                            waiting_on_socket,
                            reached_at,
                            other_pids,
                        })
                    },
                )
                .transpose()?,
        },
        JsonTerminal::LockHolder { thread } => Terminal::LockHolder(thread_now(thread)?),
        JsonTerminal::Thread { thread } => Terminal::Thread(thread_now(thread)?),
        JsonTerminal::Peers { threads } => Terminal::Peers(threads),
        JsonTerminal::Unrecognized => {
            Terminal::Unknown("an end of a kind this tracer does not know".to_string())
        }
        JsonTerminal::Unknown { reason } => Terminal::Unknown(reason),
    };
    Ok(WaitChain { process, start: chain_site(start)?, threads, blocked_ns, hops, terminal })
}

fn chain_site(site: JsonChainSite) -> Result<ChainSite, String> {
    let JsonChainSite { site, kind, object } = site;
    let kind = parse_wait_kind(&kind).ok_or_else(|| format!("unknown wait kind {kind:?}"))?;
    Ok(ChainSite { site, kind, object })
}

fn thread_now(thread: JsonThreadNow) -> Result<ThreadNow, String> {
    let JsonThreadNow { tid, name, state, syscall, call_site, stack } = thread;
    let state = match (state.as_str(), syscall) {
        ("running", _) => ThreadState::Running,
        ("blocked", Some(syscall)) => ThreadState::Blocked { syscall, call_site, stack },
        ("unknown", _) => ThreadState::Unknown,
        (other, _) => return Err(format!("thread {tid}: state {other:?} without its syscall")),
    };
    Ok(ThreadNow { tid, name, state })
}
