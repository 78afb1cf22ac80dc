//! What a goroutine blocked on a channel waits on: the channel, named by its element type,
//! length and capacity (`chan send on chan []uint8 100/100`: a full buffer, so its reader
//! is the one to look at). Read from outside: the goroutine's `g.waiting` sudog → the
//! sudog's `c` → the `runtime.hchan` (`qcount`, `dataqsiz`, `elemtype`) → the element
//! type's name in the executable's type data.

use std::collections::HashMap;

use super::{
    binary::{ChanLayout, GoBinary},
    goroutines::{Goroutine, GoroutineCounts, Memory, word},
    holders::Held,
};

/// The wait reasons of a goroutine parked in a channel operation with a sudog on the
/// channel (a nil channel's have none; a select's wait on several).
const CHANNEL_WAITS: [&str; 2] = ["chan send", "chan receive"];

/// The wait reason of a goroutine parked in a select with cases: a sudog per case,
/// linked by `waitlink` from `g.waiting`.
const SELECT_WAIT: &str = "select";

/// The most cases of a select read (the runtime allows 65,536).
const MAX_SELECT_CASES: usize = 64;

/// `sudog.g`, its first field: the goroutine a sudog belongs to while it waits.
const SUDOG_G: usize = 0;

/// Names the channel of each goroutine in `goroutines` blocked sending or receiving on one
/// (`on chan int 0/0` in its object); those whose channel cannot be read are counted.
pub fn name_channel_waits(
    pid: u32,
    binary: &GoBinary<'_>,
    bias: u64,
    goroutines: &mut [Goroutine],
    counts: &mut GoroutineCounts,
) {
    let reasons: Vec<u8> = binary
        .wait_reasons
        .iter()
        .enumerate()
        .filter(|(_, name)| CHANNEL_WAITS.contains(&name.as_str()))
        .filter_map(|(index, _)| u8::try_from(index).ok())
        .collect();
    let blocked: Vec<usize> = goroutines
        .iter()
        .enumerate()
        .filter(|(_, goroutine)| reasons.contains(&goroutine.wait_reason))
        .map(|(index, _)| index)
        .collect();
    if blocked.is_empty() {
        return;
    }
    let memory = Memory { pid };
    // The selects matter only beside goroutines blocked on a channel (see `selects_on`).
    let select = binary.wait_reasons.iter().position(|name| name == SELECT_WAIT);
    let select = select.and_then(|index| u8::try_from(index).ok());
    if let (Some(layout), Some(select)) = (binary.channels, select) {
        let selecting: Vec<usize> = (0..goroutines.len())
            .filter(|&index| goroutines[index].wait_reason == select)
            .collect();
        for batch in selecting.chunks(BATCH) {
            read_select_channels(&memory, &layout, batch, goroutines);
        }
    }
    let Some(layout) = binary.channels else {
        counts.objects_unnamed += blocked.len() as u64;
        return;
    };
    let mut names: HashMap<u64, Option<String>> = HashMap::new();
    // A batch at a time: 600,000 senders' sudogs would otherwise be 60 MiB read at once.
    for batch in blocked.chunks(BATCH) {
        let channels = channels_of(&memory, &layout, batch, goroutines);
        for (&index, channel) in batch.iter().zip(&channels) {
            goroutines[index].blocked_on =
                channel.map(|address| Held { address, what: Held::CHANNEL });
            let name = channel.and_then(|hchan| {
                names
                    .entry(hchan)
                    .or_insert_with(|| describe(&memory, &layout, binary, bias, hchan))
                    .clone()
            });
            match name {
                Some(name) => goroutines[index].object = Some(name),
                None => counts.objects_unnamed += 1,
            }
        }
    }
}

/// Goroutines whose sudogs are read at once.
const BATCH: usize = 4096;

/// The hchan of each goroutine of `blocked` (indices into `goroutines`): its sudog's `c`,
/// if the sudog still belongs to it (`sudog.g` is the goroutine: a goroutine that woke
/// meanwhile may have handed its sudog on); else, for one read with its last stack at
/// its place, the channel it was blocked on there.
fn channels_of(
    memory: &Memory,
    layout: &ChanLayout,
    blocked: &[usize],
    goroutines: &[Goroutine],
) -> Vec<Option<u64>> {
    let len = layout.sudog_c as usize + 8;
    let pieces: Vec<(u64, usize)> =
        blocked.iter().map(|&index| (goroutines[index].waiting, len)).collect();
    let mut buffer = Vec::new();
    let read = memory.read_pieces(&pieces, &mut buffer);
    blocked
        .iter()
        .zip(read)
        .map(|(&index, range)| {
            let goroutine = &goroutines[index];
            let bytes = range.map(|range| &buffer[range]);
            bytes
                .filter(|bytes| goroutine.waiting != 0 && word(bytes, SUDOG_G) == goroutine.address)
                .map(|bytes| word(bytes, layout.sudog_c as usize))
                .filter(|&hchan| hchan != 0)
                .or(goroutine.channel_at_place)
        })
        .collect()
}

/// The channels the goroutines of `selecting` (indices into `goroutines`, parked in a
/// select) wait on, into their `selects_on`: each of their sudogs' `c`, from `g.waiting`
/// along `waitlink` while the sudog is still the goroutine's own (as `channels_of`
/// checks); one read of every goroutine's next sudog at a time, `MAX_SELECT_CASES` at most.
fn read_select_channels(
    memory: &Memory,
    layout: &ChanLayout,
    selecting: &[usize],
    goroutines: &mut [Goroutine],
) {
    let len = (layout.sudog_c.max(layout.sudog_waitlink) + 8) as usize;
    // Each goroutine's next sudog.
    let mut next: Vec<(usize, u64)> = selecting
        .iter()
        .map(|&index| (index, goroutines[index].waiting))
        .filter(|&(_, sudog)| sudog != 0)
        .collect();
    let mut buffer = Vec::new();
    for _ in 0..MAX_SELECT_CASES {
        if next.is_empty() {
            break;
        }
        let pieces: Vec<(u64, usize)> = next.iter().map(|&(_, sudog)| (sudog, len)).collect();
        buffer.clear();
        let read = memory.read_pieces(&pieces, &mut buffer);
        let mut after = Vec::with_capacity(next.len());
        for (&(index, _), range) in next.iter().zip(read) {
            let Some(range) = range else { continue };
            let bytes = &buffer[range];
            let goroutine = &mut goroutines[index];
            if word(bytes, SUDOG_G) != goroutine.address {
                continue; // it woke, and its sudogs went on to others
            }
            let hchan = word(bytes, layout.sudog_c as usize);
            if hchan != 0 {
                goroutine.selects_on.push(hchan);
            }
            let link = word(bytes, layout.sudog_waitlink as usize);
            if link != 0 {
                after.push((index, link));
            }
        }
        next = after;
    }
}

/// `on chan ELEMENT LEN/CAP` for the hchan at `hchan`, if it can be read.
fn describe(
    memory: &Memory,
    layout: &ChanLayout,
    binary: &GoBinary<'_>,
    bias: u64,
    hchan: u64,
) -> Option<String> {
    let mut bytes = vec![0u8; layout.hchan_read_len()];
    memory.read_exact(hchan, &mut bytes).ok()?;
    let len = word(&bytes, layout.hchan_qcount as usize);
    let cap = word(&bytes, layout.hchan_dataqsiz as usize);
    let element = word(&bytes, layout.hchan_elemtype as usize);
    let element = binary.type_name(element.wrapping_sub(bias))?;
    Some(format!("on chan {element} {len}/{cap}"))
}
