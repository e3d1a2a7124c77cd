//! Frame reading for protocol v3, without trusting lengths.
//!
//! A hand-written codec rather than `pgwire`: a proxy must forward the
//! original bytes of every message it does not change, and `pgwire` decodes
//! into owned structs and re-encodes. Here a frame is a zero-copy slice of the
//! read buffer; only the few messages pgveil rewrites are ever decoded (by
//! the message family files beside this one).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The body-string reader, under its former path (it lives in `body`).
pub use super::body::read_cstr;
use super::budget::{Budget, Charge, Refusal};

/// Smallest read buffer we keep; grows for large messages and shrinks back
/// when idle so idle connections stay small.
pub const READ_CHUNK: usize = 8 * 1024;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: u32 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes (limits.max_message_bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame that did not fit in `limits.max_buffered_bytes`. Its bytes
    /// were read and discarded: the reader stands at the next frame.
    #[error("message of {len} bytes does not fit in limits.max_buffered_bytes now")]
    OverBudget { tag: u8, len: usize, why: Refusal },
}

/// One complete protocol message: `tag`, then the whole message bytes
/// (tag + length + body) so it can be forwarded unchanged.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The message tag ([`super::tag`]).
    pub tag: u8,
    /// The whole message: tag, length, body.
    pub raw: Bytes,
}

impl Frame {
    /// The message body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Inspect the head of `buf`: `Ok(Some(total_len))` when a whole typed
/// frame is buffered, `Ok(None)` when more bytes are needed.
pub fn complete_frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len,
        });
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Buffered reader of typed frames from one side of a connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
    /// The last read filled all the space it was given: the peer is
    /// streaming (a large result, a COPY), so read in larger chunks to cut
    /// syscalls. Idle connections stay at [`READ_CHUNK`].
    streaming: bool,
    /// Charged before a large frame's body is read.
    budget: Budget,
    /// Bytes charged per byte of a large frame: the frame plus what is
    /// built from it while it is held.
    factor: usize,
    /// The charge for the (incomplete) frame at the head of the buffer.
    charge: Option<Charge>,
    /// The charge for the last large frame taken, until the caller has
    /// sent what it built from it ([`take_charge`](Self::take_charge)).
    taken: Option<Charge>,
    /// Bytes of the frame being passed through in pieces
    /// ([`next_run`](Self::next_run)) still to come.
    pass: usize,
}

/// Read size while the peer is streaming.
pub const STREAM_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self::with_buffer(inner, max, BytesMut::new())
    }

    /// Start with bytes already read from the stream (e.g. during startup).
    pub fn with_buffer(inner: R, max: usize, buf: BytesMut) -> Self {
        FrameReader {
            inner,
            buf,
            max,
            streaming: false,
            budget: Budget::unlimited(),
            factor: 1,
            charge: None,
            taken: None,
            pass: 0,
        }
    }

    /// Charge frames larger than [`Budget::FREE_BYTES`] against `budget`,
    /// `factor` bytes per byte, before their bodies are read.
    pub fn set_budget(&mut self, budget: Budget, factor: usize) {
        self.budget = budget;
        self.factor = factor.max(1);
    }

    /// The charge of the last large frame taken: hold it until what was
    /// built from the frame has been written, then drop it.
    pub fn take_charge(&mut self) -> Option<Charge> {
        self.taken.take()
    }

    /// The stream, to write to it.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream and the bytes read but not yet taken. The budget and
    /// any charge stay behind: give the new reader its own
    /// [`set_budget`](Self::set_budget).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    /// Charge the large frame at the head of the buffer before its body is
    /// read. Refused: read and drop the frame's bytes (never holding more
    /// than one read chunk) and report it.
    async fn charge_head(&mut self, total: usize) -> Result<(), FrameError> {
        let want = total.saturating_mul(self.factor);
        match self.budget.charge(want).await {
            Ok(c) => {
                self.charge = Some(c);
                // One allocation of the frame's size, not a doubling series.
                let have = self.buf.len();
                if self.buf.capacity() < total {
                    let mut b = BytesMut::with_capacity(total);
                    b.extend_from_slice(&self.buf);
                    self.buf = b;
                }
                debug_assert!(have <= total);
                Ok(())
            }
            Err(why) => {
                let tag = self.buf[0];
                let mut left = total - self.buf.len();
                self.buf.clear();
                let mut scratch = vec![0u8; STREAM_CHUNK];
                while left > 0 {
                    let n = left.min(scratch.len());
                    let got = self.inner.read(&mut scratch[..n]).await?;
                    if got == 0 {
                        return Err(FrameError::Truncated);
                    }
                    left -= got;
                }
                self.buf = BytesMut::new();
                Err(FrameError::OverBudget {
                    tag,
                    len: total,
                    why,
                })
            }
        }
    }

    /// Announced total length of the frame at the head of the buffer, if
    /// its header is buffered and valid.
    fn head_len(&self) -> Result<Option<usize>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        complete_frame_len(&self.buf, self.max)?;
        Ok(Some(
            u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize + 1,
        ))
    }

    /// The next bytes to forward unchanged, at frame granularity for small
    /// frames and in pieces for large ones, which are therefore never held
    /// whole (for a peer whose messages pgveil never inspects past the
    /// header). `inspect` sees each small frame, and the header of each
    /// large one. Returns `Err(Closed)` on a clean EOF between frames.
    pub async fn next_run(
        &mut self,
        mut inspect: impl FnMut(u8, &[u8]) -> bool,
    ) -> Result<Bytes, FrameError> {
        loop {
            if self.pass > 0 {
                if !self.buf.is_empty() {
                    let n = self.pass.min(self.buf.len());
                    self.pass -= n;
                    let run = self.buf.split_to(n).freeze();
                    if self.pass == 0 {
                        self.maybe_shrink();
                    }
                    return Ok(run);
                }
            } else if let Some(run) = self.take_run(&mut inspect)? {
                return Ok(run);
            } else if let Some(total) = self.head_len()?
                && total > Budget::FREE_BYTES
            {
                inspect(self.buf[0], &self.buf[..5]);
                self.pass = total;
                continue;
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK {
                self.buf.reserve(STREAM_CHUNK);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() && self.pass == 0 {
                    FrameError::Closed
                } else {
                    FrameError::Truncated
                });
            }
        }
    }

    /// Before a large frame is charged and held: read until its header and
    /// its first `want` bytes (or all of it, if shorter) are buffered, and
    /// return its tag and total length; `None` when the frame at the head
    /// is small, already whole, or already charged (read it with
    /// [`fill`](Self::fill)). The caller may then pass it in pieces
    /// ([`pass_head`](Self::pass_head)) instead of holding it; what is
    /// buffered of it is [`buffered`](Self::buffered). Returns
    /// `Err(Closed)` on a clean EOF between frames.
    pub async fn large_head(&mut self, want: usize) -> Result<Option<(u8, usize)>, FrameError> {
        loop {
            if self.charge.is_some() || complete_frame_len(&self.buf, self.max)?.is_some() {
                return Ok(None);
            }
            if let Some(total) = self.head_len()? {
                if total <= Budget::FREE_BYTES {
                    return Ok(None);
                }
                if self.buf.len() >= want.min(total) {
                    return Ok(Some((self.buf[0], total)));
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    FrameError::Closed
                } else {
                    FrameError::Truncated
                });
            }
        }
    }

    /// The bytes read and not yet taken: after
    /// [`large_head`](Self::large_head), the start of the large frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Pass the large frame at the head of the buffer (`total` bytes, as
    /// [`large_head`](Self::large_head) returned) in pieces: take them with
    /// [`next_piece`](Self::next_piece) until it returns `None`.
    pub fn pass_head(&mut self, total: usize) {
        debug_assert!(self.pass == 0 && self.charge.is_none());
        self.pass = total;
    }

    /// The next piece of the frame being passed
    /// ([`pass_head`](Self::pass_head)), at most what one read brought;
    /// `None` once it has all been taken. Never holds more than the
    /// pieces not yet taken.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.pass == 0 {
            return Ok(None);
        }
        if self.buf.is_empty() {
            if self.buf.capacity() < READ_CHUNK {
                self.buf.reserve(STREAM_CHUNK);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(FrameError::Truncated);
            }
        }
        let n = self.pass.min(self.buf.len());
        self.pass -= n;
        let piece = self.buf.split_to(n).freeze();
        if self.pass == 0 {
            // What follows the frame must not keep the pieces' memory.
            self.unshare();
            self.maybe_shrink();
        }
        Ok(Some(piece))
    }

    /// Read from the stream until at least one complete frame is buffered.
    /// Returns `Err(Closed)` on a clean EOF between frames.
    pub async fn fill(&mut self) -> Result<(), FrameError> {
        loop {
            match complete_frame_len(&self.buf, self.max)? {
                Some(_) => return Ok(()),
                None => {
                    if self.charge.is_none()
                        && let Some(total) = self.head_len()?
                        && total > Budget::FREE_BYTES
                    {
                        self.charge_head(total).await?;
                    }
                    let chunk = if self.streaming {
                        STREAM_CHUNK
                    } else {
                        READ_CHUNK
                    };
                    // A charged frame was given its whole size at once.
                    let charged_room =
                        self.charge.is_some() && self.buf.capacity() > self.buf.len();
                    if !charged_room && self.buf.capacity() - self.buf.len() < chunk {
                        // Reserve for the announced frame (bounded by `max`,
                        // already checked) or one chunk.
                        let want = if self.buf.len() >= 5 {
                            let len = u32::from_be_bytes([
                                self.buf[1],
                                self.buf[2],
                                self.buf[3],
                                self.buf[4],
                            ]) as usize
                                + 1;
                            (len - self.buf.len()).clamp(chunk, 1 << 20)
                        } else {
                            chunk
                        };
                        self.buf.reserve(want);
                    }
                    let space = self.buf.capacity() - self.buf.len();
                    let n = self.inner.read_buf(&mut self.buf).await?;
                    self.streaming = n == space;
                    if n == 0 {
                        return Err(if self.buf.is_empty() {
                            FrameError::Closed
                        } else {
                            FrameError::Truncated
                        });
                    }
                }
            }
        }
    }

    /// Take the next complete frame already in the buffer, if any.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match complete_frame_len(&self.buf, self.max)? {
            Some(total) => {
                let raw = self.buf.split_to(total).freeze();
                if total > Budget::FREE_BYTES {
                    self.taken = self.charge.take();
                    self.unshare();
                }
                Ok(Some(Frame { tag: raw[0], raw }))
            }
            None => {
                self.maybe_shrink();
                Ok(None)
            }
        }
    }

    /// Take every complete frame at the head of the buffer as one contiguous
    /// block, without splitting it into frames: the fast path for relaying.
    /// Calls `inspect` on each frame header+body; stops before a frame for
    /// which `inspect` returns false (that frame is left in the buffer).
    pub fn take_run(
        &mut self,
        mut inspect: impl FnMut(u8, &[u8]) -> bool,
    ) -> Result<Option<Bytes>, FrameError> {
        let mut off = 0;
        let mut large = false;
        while let Some(total) = complete_frame_len(&self.buf[off..], self.max)? {
            if !inspect(self.buf[off], &self.buf[off..off + total]) {
                break;
            }
            large |= total > Budget::FREE_BYTES;
            off += total;
        }
        if off == 0 {
            return Ok(None);
        }
        let run = self.buf.split_to(off).freeze();
        if large {
            self.taken = self.charge.take();
            self.unshare();
        }
        Ok(Some(run))
    }

    /// The complete frames at the head of the buffer, whole (tag, length,
    /// body), without taking them: up to the first frame that is not
    /// complete, is malformed or is larger than [`Budget::FREE_BYTES`]
    /// (those are read as [`try_frame`](Self::try_frame) reads them). Take
    /// a prefix of them with [`take_prefix`](Self::take_prefix).
    pub fn buffered_frames(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest: &[u8] = if self.charge.is_none() {
            &self.buf
        } else {
            &[]
        };
        std::iter::from_fn(move || {
            let total = complete_frame_len(rest, self.max).ok().flatten()?;
            if total > Budget::FREE_BYTES {
                return None;
            }
            let (frame, after) = rest.split_at(total);
            rest = after;
            Some(frame)
        })
    }

    /// Take the first `n` bytes of the buffer as one block: whole frames
    /// that [`buffered_frames`](Self::buffered_frames) returned.
    pub fn take_prefix(&mut self, n: usize) -> Bytes {
        debug_assert!(n <= self.buf.len());
        self.buf.split_to(n).freeze()
    }

    /// Wait for and return the next frame.
    pub async fn next(&mut self) -> Result<Frame, FrameError> {
        self.fill().await?;
        Ok(self.try_frame()?.expect("fill guarantees a complete frame"))
    }

    /// Whether a complete frame is already buffered.
    pub fn has_frame(&self) -> bool {
        matches!(complete_frame_len(&self.buf, self.max), Ok(Some(_)))
    }

    /// After a large frame was split off, the rest of the buffer still
    /// shares its allocation and would keep it alive (after its charge was
    /// released) until the next read: move the few bytes left to a buffer
    /// of their own, so the frame's memory goes when the frame does.
    fn unshare(&mut self) {
        self.buf = BytesMut::from(&self.buf[..]);
    }

    fn maybe_shrink(&mut self) {
        // After a large message, give the memory back when the buffer is empty.
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            self.buf = BytesMut::new();
        }
    }
}

/// The untyped first message of a connection (startup, SSLRequest,
/// GSSENCRequest, CancelRequest): length then body.
pub async fn read_startup<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Bytes, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len);
    // PostgreSQL caps startup packets at 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
    let cap = max.min(10_000);
    if n < 8 {
        return Err(FrameError::BadLength { tag: '\0', len: n });
    }
    if n as usize > cap {
        return Err(FrameError::TooLarge {
            len: n as usize,
            max: cap,
        });
    }
    let mut buf = BytesMut::with_capacity(n as usize);
    buf.extend_from_slice(&len);
    buf.resize(n as usize, 0);
    r.read_exact(&mut buf[4..]).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests;
