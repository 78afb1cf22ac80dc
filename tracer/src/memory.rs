//! The target's memory, read from outside with `process_vm_readv` (no ptrace stop): the
//! Go runtime's goroutines and CPython's frames are read through it.

use std::io;
use std::ops::Range;

/// `IOV_MAX` on Linux: the most pieces one `process_vm_readv` takes.
pub const IOV_MAX: usize = 1024;

/// The little-endian u64 at `at` in `bytes`; 0 past their end.
pub fn word(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|slice| slice.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or_default()
}

/// The target's memory, read with `process_vm_readv` (needs ptrace access: root).
pub struct Memory {
    pub pid: u32,
}

impl Memory {
    pub fn read_exact(&self, address: u64, buffer: &mut [u8]) -> io::Result<()> {
        let read = self.readv(&[(address, buffer.len())], buffer)?;
        if read == buffer.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short read at {address:#x}")))
        }
    }

    /// `len` bytes at each address; `None` where that piece could not be read.
    pub fn read_many(&self, addresses: &[u64], len: usize) -> Vec<Option<Vec<u8>>> {
        let pieces: Vec<(u64, usize)> = addresses.iter().map(|&address| (address, len)).collect();
        let mut buffer = Vec::new();
        self.read_pieces(&pieces, &mut buffer)
            .into_iter()
            .map(|range| range.map(|range| buffer[range].to_vec()))
            .collect()
    }

    /// Each (address, length) piece into `buffer`: where each landed, or `None` where it
    /// could not be read. Pieces close together in memory are read as one span (the
    /// kernel pins each span's pages once: 600,000 `g`s laid out side by side cost a few
    /// thousand spans, not 600,000 pieces); a span that cannot be read is read again piece
    /// by piece, so only what is really unreadable is lost.
    pub fn read_pieces(
        &self,
        pieces: &[(u64, usize)],
        buffer: &mut Vec<u8>,
    ) -> Vec<Option<Range<usize>>> {
        self.read_pieces_spanning(pieces, buffer, SPAN_GAP)
    }

    /// [`Memory::read_pieces`], pieces at most `gap` bytes apart read as one span.
    pub fn read_pieces_spanning(
        &self,
        pieces: &[(u64, usize)],
        buffer: &mut Vec<u8>,
        gap: u64,
    ) -> Vec<Option<Range<usize>>> {
        let spans = Span::cover_with(pieces, gap);
        let span_pieces: Vec<(u64, usize)> =
            spans.iter().map(|span| (span.start, (span.end - span.start) as usize)).collect();
        let read = self.read_pieces_apart(&span_pieces, buffer);
        let mut results = vec![None; pieces.len()];
        let mut retry = Vec::new();
        for (span, landed) in spans.iter().zip(read) {
            match landed {
                Some(landed) => {
                    for &index in &span.pieces {
                        let (address, len) = pieces[index];
                        let from = landed.start + (address - span.start) as usize;
                        results[index] = Some(from..from + len);
                    }
                }
                None if span.pieces.len() > 1 => retry.extend(span.pieces.iter().copied()),
                None => {}
            }
        }
        if !retry.is_empty() {
            let apart: Vec<(u64, usize)> = retry.iter().map(|&index| pieces[index]).collect();
            let mut again = Vec::new();
            let landed = self.read_pieces_apart(&apart, &mut again);
            let offset = buffer.len();
            buffer.extend_from_slice(&again);
            for (index, landed) in retry.into_iter().zip(landed) {
                results[index] = landed.map(|range| range.start + offset..range.end + offset);
            }
        }
        results
    }

    /// Each piece on its own, into `buffer` back to back, `IOV_MAX` per call. A call stops
    /// at the first unreadable byte; the pieces after it are read again from there.
    fn read_pieces_apart(
        &self,
        pieces: &[(u64, usize)],
        buffer: &mut Vec<u8>,
    ) -> Vec<Option<Range<usize>>> {
        let total: usize = pieces.iter().map(|(_, len)| len).sum();
        // Grown (zeroed) only when too short: the bytes of an earlier read left beyond what
        // this one writes are never handed out (results point only at what was read).
        if buffer.len() < total {
            buffer.resize(total, 0);
        }
        let mut results: Vec<Option<Range<usize>>> = Vec::with_capacity(pieces.len());
        let mut start = 0;
        let mut offset = 0;
        while start < pieces.len() {
            let batch = &pieces[start..(start + IOV_MAX).min(pieces.len())];
            let batch_len: usize = batch.iter().map(|(_, len)| len).sum();
            let read = self.readv(batch, &mut buffer[offset..offset + batch_len]).unwrap_or(0);
            let mut done = 0;
            let mut complete = 0;
            for &(_, len) in batch {
                if done + len > read {
                    break;
                }
                results.push(Some(offset + done..offset + done + len));
                done += len;
                complete += 1;
            }
            let mut skipped = done;
            if complete < batch.len() {
                // The piece where the read stopped is unreadable (or the call failed on it).
                results.push(None);
                skipped += batch[complete].1;
                complete += 1;
            }
            offset += skipped;
            start += complete;
        }
        results
    }

    /// One `process_vm_readv` of the pieces into `buffer` (their lengths back to back).
    fn readv(&self, pieces: &[(u64, usize)], buffer: &mut [u8]) -> io::Result<usize> {
        let local = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
        let remote: Vec<libc::iovec> = pieces
            .iter()
            .map(|&(address, len)| libc::iovec {
                iov_base: address as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: `local` covers exactly `buffer`, which outlives the call; the remote
        // iovecs name the target's memory and are only read by the kernel.
        let read = unsafe {
            libc::process_vm_readv(
                self.pid as libc::pid_t,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if read < 0 { Err(io::Error::last_os_error()) } else { Ok(read as usize) }
    }
}

/// Bytes between two pieces that are still read as one span: less than reading them
/// costs a piece of its own.
const SPAN_GAP: u64 = 512;
/// The longest span: spans are read `IOV_MAX` at a time into one buffer.
const MAX_SPAN: u64 = 64 * 1024;

/// Pieces read together: their addresses' cover, and their indices.
#[derive(Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    pieces: Vec<usize>,
}

impl Span {
    /// The spans that cover `pieces` (address, length), in address order, pieces at most
    /// `gap` bytes apart in one span.
    fn cover_with(pieces: &[(u64, usize)], gap: u64) -> Vec<Span> {
        let mut order: Vec<usize> = (0..pieces.len()).collect();
        order.sort_unstable_by_key(|&index| pieces[index].0);
        let mut spans: Vec<Span> = Vec::new();
        for index in order {
            let (start, len) = pieces[index];
            let end = start.saturating_add(len as u64);
            match spans.last_mut() {
                Some(span)
                    if start <= span.end.saturating_add(gap)
                        && end.max(span.end) - span.start <= MAX_SPAN =>
                {
                    span.end = span.end.max(end);
                    span.pieces.push(index);
                }
                _ => spans.push(Span { start, end, pieces: vec![index] }),
            }
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_close_together_are_one_span() {
        // Two g's 16 bytes apart, one far away, one overlapping the first.
        let pieces = [(0x2000, 64), (0x1000, 48), (0x1040, 48), (0x1010, 8)];
        let spans = Span::cover_with(&pieces, SPAN_GAP);
        assert_eq!(
            spans,
            vec![
                Span { start: 0x1000, end: 0x1070, pieces: vec![1, 3, 2] },
                Span { start: 0x2000, end: 0x2040, pieces: vec![0] },
            ]
        );
    }
}
