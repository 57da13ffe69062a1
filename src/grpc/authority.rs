//! Repairs the `:authority` of requests whose client put a whole URL there.
//!
//! etcdctl 3.4 dials `endpoint status` and `endpoint hashkv` (also their
//! `--cluster` forms, on the advertised client URLs) as
//! `passthrough:///http://127.0.0.1:2379`, and its grpc-go then sends the
//! endpoint as written, `http://127.0.0.1:2379`, as the HTTP/2
//! `:authority`. grpc-go servers (etcd) never judge that field; h2, under
//! hyper and tonic, parses it as a URI authority and answers the request
//! with `RST_STREAM(PROTOCOL_ERROR)` ("malformed headers: malformed
//! authority"), and neither h2, hyper nor tonic has a setting to relax that.
//!
//! So every accepted client connection reads through [`FixAuthority`], which
//! sits between the transport and hyper:
//!
//! ```text
//!  client ──TCP (or TLS, decrypted)──▶ FixAuthority ──▶ hyper / h2 ──▶ tonic services
//!         ◀──────────────────────────── (untouched) ◀──
//! ```
//!
//! It parses the client→server byte stream into HTTP/2 frames
//! ([`Rewriter`]) and judges a connection by its first request: that header
//! block (a HEADERS frame and its CONTINUATIONs) is HPACK-decoded and its
//! `:authority` checked by the parser h2 uses.
//!
//! * Fine (every tonic, Go `clientv3`, or etcdctl `get`/`put` connection):
//!   the block goes on byte for byte and the rewriter hands the connection
//!   over; from then on bytes are read straight into h2's buffer, unparsed.
//!   gRPC clients keep one authority per connection, so a later request is
//!   not judged (were it malformed, h2 would reset it, as without this layer).
//! * Not fine: `scheme://host:port[/…]` becomes `host:port`; a value with no
//!   authority in it (etcd 3.5.0's `#initially=[…]`, a socket path) is
//!   dropped, which h2 accepts, as grpc-go servers accept anything there.
//!   The block is re-encoded with literals that never enter the dynamic
//!   table, so the server's HPACK table stops following the client's, and
//!   every later block of the connection is decoded (the rewriter's decoder
//!   follows the client's dynamic table), repaired and re-encoded the same
//!   way; the server never again needs its table. Other frames pass
//!   through untouched.
//!
//! The server→client direction is never touched. Anything the rewriter does
//! not understand — a stream that does not open with the HTTP/2 preface (an
//! HTTP/1 request), a frame out of place, a block it cannot decode or one
//! over [`MAX_BLOCK`] — makes it give up: what it holds and everything after
//! goes to h2 unchanged, and h2 rejects the connection as it would have
//! anyway.
//!
//! The layer works on the decrypted stream, so with TLS it must wrap the
//! stream the TLS acceptor yields (terminate TLS in the incoming stream, not
//! with tonic's `Server::tls_config`, which wraps after it).
//!
//! Cost: a connection that needs no repair pays one HPACK decode, for its
//! first request, then nothing (`cargo bench --bench authority`; with
//! `cairn-bench put` at 64 clients the server's CPU per put was 49.0 µs
//! without this layer and 49.2 µs with it, medians of 10 alternating
//! rounds). One that does (etcdctl's short `endpoint` connections) pays a
//! decode and a re-encode per request, a few microseconds. Decoding every
//! block of every connection instead cost 72 µs per put: loona-hpack builds
//! its Huffman table for each coded string.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
const FRAME_HEAD: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Frame payloads the rewriter emits stay within the smallest
/// SETTINGS_MAX_FRAME_SIZE a peer may announce, so any server takes them.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The HPACK dynamic table size the server allows its clients: h2's default
/// SETTINGS_HEADER_TABLE_SIZE, which cairn does not change (tonic has no
/// setting for it). A client's size update above it is an error, as in h2.
const SERVER_HEADER_TABLE_SIZE: usize = 4_096;
/// The largest header block (all its frames, as sent) the rewriter holds.
/// h2 refuses far smaller ones (16 KiB of headers by default, and a few
/// CONTINUATIONs), so a client past this is already lost.
pub const MAX_BLOCK: usize = 1 << 20;
/// The buffer a connection reads through when the next bytes must be parsed.
const SCRATCH: usize = 8 * 1024;

/// An accepted client connection whose request header blocks go through a
/// [`Rewriter`] on their way to hyper. Writes pass straight through.
pub struct FixAuthority<IO> {
    io: IO,
    rewriter: Rewriter,
    /// Bytes read from the client and not yet parsed into `out`; reused.
    scratch: Box<[u8]>,
    /// Bytes the rewriter produced that hyper has not read yet.
    out: BytesMut,
    /// The client's side has ended; `out` is all that is left.
    eof: bool,
}

impl<IO> FixAuthority<IO> {
    pub fn new(io: IO) -> FixAuthority<IO> {
        FixAuthority {
            io,
            rewriter: Rewriter::new(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FixAuthority<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Inside a frame the rewriter passes on (a DATA payload, say),
            // bytes that cannot run past the frame go straight to hyper.
            if this.rewriter.passthrough() >= buf.remaining() {
                if this.rewriter.is_raw() && !this.scratch.is_empty() {
                    // Handed over for good: keep no buffers per connection.
                    this.scratch = Box::default();
                    this.out = BytesMut::new();
                }
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                this.rewriter.passed(buf.filled().len() - before);
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                this.rewriter.finish(&mut this.out);
                this.eof = true;
            } else {
                this.rewriter.feed(&this.scratch[..n], &mut this.out);
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FixAuthority<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for FixAuthority<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Where the rewriter is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Checking the connection preface; `n` bytes of it seen (and passed on).
    Preface(usize),
    /// Collecting a 9-byte frame header.
    Head,
    /// Inside the payload of a frame that passes through: bytes left.
    Payload(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame.
    HeaderPayload(usize),
    /// Gave up (or not HTTP/2): everything passes through unchanged.
    Raw,
}

/// The frame-level state machine of [`FixAuthority`], without I/O: bytes
/// from the client go in ([`Rewriter::feed`]), bytes for the server come out.
pub struct Rewriter {
    state: State,
    /// The frame header being collected.
    head: [u8; FRAME_HEAD],
    head_len: usize,
    /// The payload of the header frame being collected.
    payload: Vec<u8>,
    /// The open header block: its frames as received, in case it passes on
    /// unchanged (or the rewriter gives up)...
    block_raw: Vec<u8>,
    /// ...its HPACK fragments, concatenated...
    fragment: Vec<u8>,
    /// ...and its HEADERS frame's stream, flags and priority fields (`None`
    /// while no block is open).
    block: Option<BlockStart>,
    /// Mirrors the client's HPACK encoder (its dynamic table).
    decoder: loona_hpack::Decoder<'static>,
    /// The connection's first request needed a repair: every block is
    /// re-encoded (the server's dynamic table no longer follows the
    /// client's). Had it not, the rewriter would have handed the connection
    /// over (`State::Raw`).
    repairing: bool,
    /// The decoded header list of the current block; reused.
    fields: Fields,
    /// The re-encoded block; reused.
    encoded: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct BlockStart {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// A decoded header list: names and values in one buffer, so that decoding
/// a block allocates nothing once the buffers have grown.
#[derive(Default)]
struct Fields {
    bytes: Vec<u8>,
    /// (name start, name end, value end) into `bytes`; the value starts at
    /// the name's end.
    spans: Vec<(usize, usize, usize)>,
}

impl Fields {
    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.spans
            .push((start, start + name.len(), start + name.len() + value.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|&(n, v, e)| (&self.bytes[n..v], &self.bytes[v..e]))
    }
}

/// What a request's `:authority` needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Repair {
    /// h2 takes it as it is.
    Keep,
    /// Replace it with this part of it (`host:port` out of a URL).
    Replace(std::ops::Range<usize>),
    /// Nothing in it is an authority: drop the field.
    Drop,
}

/// Judges an `:authority` value with the parser h2 judges it with.
pub fn repair(value: &[u8]) -> Repair {
    if http::uri::Authority::try_from(value).is_ok() {
        return Repair::Keep;
    }
    if let Some(sep) = value.windows(3).position(|w| w == b"://") {
        let scheme = &value[..sep];
        let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        let start = sep + 3;
        let rest = &value[start..];
        let len = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        if is_scheme && len > 0 && http::uri::Authority::try_from(&rest[..len]).is_ok() {
            return Repair::Replace(start..start + len);
        }
    }
    Repair::Drop
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter::new()
    }
}

impl Rewriter {
    pub fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(SERVER_HEADER_TABLE_SIZE);
        Rewriter {
            state: State::Preface(0),
            head: [0; FRAME_HEAD],
            head_len: 0,
            payload: Vec::new(),
            block_raw: Vec::new(),
            fragment: Vec::new(),
            block: None,
            decoder,
            repairing: false,
            fields: Fields::default(),
            encoded: Vec::new(),
        }
    }

    /// Whether the rewriter has given up and passes everything unchanged.
    pub fn is_raw(&self) -> bool {
        self.state == State::Raw
    }

    /// How many of the next client bytes pass through unchanged, so that
    /// they need not be fed (report them with [`Rewriter::passed`]).
    pub fn passthrough(&self) -> usize {
        match self.state {
            State::Payload(left) => left,
            State::Raw => usize::MAX,
            _ => 0,
        }
    }

    /// `n` bytes (at most [`Rewriter::passthrough`]) went through unparsed.
    pub fn passed(&mut self, n: usize) {
        if let State::Payload(left) = self.state {
            self.state = match left - n {
                0 => State::Head,
                left => State::Payload(left),
            };
        }
    }

    /// Parses bytes from the client, appending what the server should read
    /// to `out`. Bytes of an unfinished header block are held back.
    pub fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) {
        while !input.is_empty() {
            match self.state {
                State::Raw => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    if input[..n] != PREFACE[seen..seen + n] {
                        // Not HTTP/2 with prior knowledge: not ours to judge.
                        self.state = State::Raw;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Head => {
                    let n = (FRAME_HEAD - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == FRAME_HEAD {
                        self.head_len = 0;
                        self.on_head(out);
                    }
                }
                State::Payload(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.passed(n);
                }
                State::HeaderPayload(left) => {
                    let n = left.min(input.len());
                    self.payload.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == left {
                        self.on_header_frame(out);
                    } else {
                        self.state = State::HeaderPayload(left - n);
                    }
                }
            }
        }
    }

    /// The client closed its side: whatever is held goes on as it came (h2
    /// will see a truncated stream, as without the rewriter).
    pub fn finish(&mut self, out: &mut BytesMut) {
        match self.state {
            State::HeaderPayload(_) => {
                out.extend_from_slice(&self.block_raw);
                out.extend_from_slice(&self.head);
                out.extend_from_slice(&self.payload);
            }
            State::Head => {
                out.extend_from_slice(&self.block_raw);
                out.extend_from_slice(&self.head[..self.head_len]);
            }
            _ => {}
        }
        self.state = State::Raw;
    }

    /// A complete frame header is in `self.head`.
    fn on_head(&mut self, out: &mut BytesMut) {
        let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
        let kind = self.head[3];
        let stream_id =
            u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]])
                & 0x7fff_ffff;
        let in_order = match (kind, &self.block) {
            (TYPE_HEADERS, None) => true,
            (TYPE_CONTINUATION, Some(open)) => open.stream_id == stream_id,
            // Nothing may come between a block's frames, and a
            // CONTINUATION must follow one.
            (_, Some(_)) | (TYPE_CONTINUATION, None) => false,
            (_, None) => {
                out.extend_from_slice(&self.head);
                self.state = if len == 0 {
                    State::Head
                } else {
                    State::Payload(len)
                };
                return;
            }
        };
        if !in_order || self.block_raw.len() + FRAME_HEAD + len > MAX_BLOCK {
            self.give_up(out);
            out.extend_from_slice(&self.head);
            return;
        }
        self.payload.clear();
        if len == 0 {
            self.on_header_frame(out);
        } else {
            self.state = State::HeaderPayload(len);
        }
    }

    /// A HEADERS or CONTINUATION frame is complete: `self.head` and
    /// `self.payload`.
    fn on_header_frame(&mut self, out: &mut BytesMut) {
        let flags = self.head[4];
        self.block_raw.extend_from_slice(&self.head);
        self.block_raw.extend_from_slice(&self.payload);
        if self.block.is_none() {
            let stream_id =
                u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]])
                    & 0x7fff_ffff;
            let Some((priority, fragment)) = split_headers_payload(flags, &self.payload) else {
                // h2 rejects the frame; let it.
                self.give_up(out);
                return;
            };
            self.fragment.clear();
            self.fragment.extend_from_slice(fragment);
            self.block = Some(BlockStart {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
            });
        } else {
            self.fragment.extend_from_slice(&self.payload);
        }
        self.state = State::Head;
        if flags & FLAG_END_HEADERS != 0 {
            self.on_block(out);
        }
    }

    /// Hands what is held to h2 as it came and stops interpreting: the
    /// rewriter is done with this connection.
    fn give_up(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.block_raw);
        // Nothing is parsed again: free the buffers and the HPACK table.
        self.block_raw = Vec::new();
        self.payload = Vec::new();
        self.fragment = Vec::new();
        self.fields = Fields::default();
        self.encoded = Vec::new();
        self.decoder = loona_hpack::Decoder::new();
        self.block = None;
        self.state = State::Raw;
    }

    /// A header block is complete: decode it, repair it if it needs it, and
    /// pass it on.
    fn on_block(&mut self, out: &mut BytesMut) {
        let Some(start) = self.block else {
            return;
        };
        self.fields.clear();
        let fields = &mut self.fields;
        if self
            .decoder
            .decode_with_cb(&self.fragment, |name, value| fields.push(&name, &value))
            .is_err()
        {
            // h2's decoder, in the same state (or, once repairing, seeing
            // these bytes out of context), fails the connection as well.
            self.give_up(out);
            return;
        }
        let authority = self.fields.iter().enumerate().find_map(|(i, (n, v))| {
            (n == b":authority")
                .then(|| (i, repair(v)))
                .filter(|(_, r)| *r != Repair::Keep)
        });
        if authority.is_none() && !self.repairing {
            // The first request's authority is fine: a gRPC client keeps
            // one authority per connection, so the rest of it goes to h2
            // unparsed, at no cost.
            self.give_up(out);
            return;
        }
        self.repairing = true;
        self.encode(authority);
        frame_block(&start, &self.encoded, out);
        self.block_raw.clear();
        self.block = None;
    }

    /// Re-encodes `self.fields` into `self.encoded`, with the authority at
    /// field `authority.0` repaired, as literals that are never indexed (so
    /// the server's dynamic table never changes again).
    fn encode(&mut self, authority: Option<(usize, Repair)>) {
        self.encoded.clear();
        for (i, (name, value)) in self.fields.iter().enumerate() {
            let value = match &authority {
                Some((at, repair)) if *at == i => match repair {
                    Repair::Replace(range) => &value[range.clone()],
                    Repair::Drop => continue,
                    Repair::Keep => value,
                },
                _ => value,
            };
            // Literal header field without indexing, new name (RFC 7541
            // §6.2.2): 0x00, then the name and the value as plain strings.
            self.encoded.push(0x00);
            push_string(&mut self.encoded, name);
            push_string(&mut self.encoded, value);
        }
    }
}

/// Splits a HEADERS payload into its priority fields and its block fragment,
/// or None if its padding or priority fields do not fit.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&n, tail) = rest.split_first()?;
        pad = n as usize;
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (fields, tail) = rest.split_first_chunk::<5>()?;
        priority = Some(*fields);
        rest = tail;
    }
    let len = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..len]))
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2).
fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// Frames a header block as one HEADERS frame and as many CONTINUATIONs as
/// it needs, none larger than [`MAX_FRAME_PAYLOAD`].
fn frame_block(start: &BlockStart, block: &[u8], out: &mut BytesMut) {
    let mut rest = block;
    let mut first = true;
    loop {
        let prefix = if first && start.priority.is_some() {
            5
        } else {
            0
        };
        let n = rest.len().min(MAX_FRAME_PAYLOAD - prefix);
        let (chunk, tail) = rest.split_at(n);
        let mut flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        let kind = if first {
            if start.end_stream {
                flags |= FLAG_END_STREAM;
            }
            if start.priority.is_some() {
                flags |= FLAG_PRIORITY;
            }
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        };
        let len = (prefix + n) as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&start.stream_id.to_be_bytes());
        if let (true, Some(priority)) = (first, start.priority) {
            out.extend_from_slice(&priority);
        }
        out.extend_from_slice(chunk);
        first = false;
        rest = tail;
        if rest.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    /// One frame as sent on the wire.
    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream_id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[])
    }

    fn data(stream_id: u32, body: &[u8]) -> Vec<u8> {
        frame(0x0, FLAG_END_STREAM, stream_id, body)
    }

    /// HPACK representations a client's encoder may use (RFC 7541 §6).
    fn indexed(index: u8) -> Vec<u8> {
        vec![0x80 | index]
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        push_string(&mut out, s.as_bytes());
        out
    }

    /// Literal with incremental indexing (enters the dynamic table), name
    /// from the static table.
    fn indexing(name_index: u8, value: &str) -> Vec<u8> {
        let mut out = vec![0x40 | name_index];
        out.extend(string(value));
        out
    }

    /// Literal with incremental indexing, new name.
    fn indexing_new(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x40];
        out.extend(string(name));
        out.extend(string(value));
        out
    }

    fn block(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn headers(stream_id: u32, block: &[u8]) -> Vec<u8> {
        frame(TYPE_HEADERS, FLAG_END_HEADERS, stream_id, block)
    }

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Runs `input` through a rewriter in chunks of `chunk` bytes.
    fn rewrite(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::new();
        let mut out = BytesMut::new();
        for piece in input.chunks(chunk) {
            rewriter.feed(piece, &mut out);
        }
        rewriter.finish(&mut out);
        out.to_vec()
    }

    /// What a server sees in the rewriter's output: the frames after the
    /// preface, with each header block joined and decoded by one decoder
    /// for the whole connection (as h2 does). Returns (kind, flags, stream,
    /// payload or decoded block) per frame or block.
    struct Seen {
        frames: Vec<(u8, u8, u32, Vec<u8>)>,
        blocks: Vec<(u32, u8, HeaderList)>,
    }

    fn server_view(bytes: &[u8]) -> Seen {
        let bytes = bytes.strip_prefix(&PREFACE[..]).expect("preface first");
        let mut frames = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let sid = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push((rest[3], rest[4], sid, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut open: Option<(u32, u8, Vec<u8>)> = None;
        for (kind, flags, sid, payload) in &frames {
            match *kind {
                TYPE_HEADERS => {
                    assert!(open.is_none(), "HEADERS inside a block");
                    let (_, fragment) = split_headers_payload(*flags, payload).expect("HEADERS");
                    open = Some((*sid, *flags, fragment.to_vec()));
                }
                TYPE_CONTINUATION => {
                    let (s, _, b) = open.as_mut().expect("CONTINUATION after HEADERS");
                    assert_eq!(*s, *sid);
                    b.extend_from_slice(payload);
                }
                _ => assert!(open.is_none(), "frame {kind} inside a header block"),
            }
            if matches!(*kind, TYPE_HEADERS | TYPE_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
                let (s, f, b) = open.take().expect("open block");
                blocks.push((s, f, decoder.decode(&b).expect("server decodes the block")));
            }
        }
        Seen { frames, blocks }
    }

    #[test]
    fn repair_keeps_authorities_and_cuts_urls() {
        struct Case {
            value: &'static str,
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                value: "127.0.0.1:2379",
                want: Some("127.0.0.1:2379"),
            },
            Case {
                value: "localhost",
                want: Some("localhost"),
            },
            Case {
                value: "[::1]:2379",
                want: Some("[::1]:2379"),
            },
            Case {
                value: "user@etcd-0.etcd:2379",
                want: Some("user@etcd-0.etcd:2379"),
            },
            Case {
                value: "http://127.0.0.1:2379",
                want: Some("127.0.0.1:2379"),
            },
            Case {
                value: "https://[::1]:2379/",
                want: Some("[::1]:2379"),
            },
            Case {
                value: "https://etcd-0.etcd:2379?x#y",
                want: Some("etcd-0.etcd:2379"),
            },
            // etcd 3.5.0's clientv3, a unix socket path, nothing at all.
            Case {
                value: "#initially=[https://127.0.0.1:2379]",
                want: None,
            },
            Case {
                value: "unix:///run/etcd.sock",
                want: None,
            },
            Case {
                value: "/run/etcd.sock",
                want: None,
            },
            Case {
                value: "http://",
                want: None,
            },
            Case {
                value: "://127.0.0.1:2379",
                want: None,
            },
            Case {
                value: "",
                want: None,
            },
        ];
        for case in cases {
            let v = case.value.as_bytes();
            let got = match repair(v) {
                Repair::Keep => Some(case.value),
                Repair::Replace(r) => Some(&case.value[r]),
                Repair::Drop => None,
            };
            assert_eq!(got, case.want, "{:?}", case.value);
            if let Some(a) = got {
                assert!(
                    http::uri::Authority::try_from(a).is_ok(),
                    "{a:?} is what h2 takes"
                );
            }
        }
    }

    #[test]
    fn good_authorities_pass_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        for sid in [1, 3] {
            input.extend(headers(
                sid,
                &block(&[
                    indexed(3),
                    indexed(6),
                    indexing(4, "/etcdserverpb.KV/Range"),
                    indexing(1, "127.0.0.1:2379"),
                    indexing_new("te", "trailers"),
                ]),
            ));
            input.extend(data(sid, &[0, 0, 0, 0, 2, 10, 1]));
        }
        for chunk in [1, 7, 4096] {
            assert_eq!(rewrite(&input, chunk), input, "chunks of {chunk}");
        }
    }

    #[test]
    fn url_authority_becomes_host_port_and_other_frames_pass() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        let body = data(1, &[0, 0, 0, 0, 2, 10, 1]);
        input.extend(headers(
            1,
            &block(&[
                indexed(3),
                indexed(6),
                indexing(4, "/etcdserverpb.Maintenance/Status"),
                indexing(1, "http://127.0.0.1:2379"),
                indexing_new("te", "trailers"),
            ]),
        ));
        input.extend(body.clone());
        let out = rewrite(&input, 5);
        let seen = server_view(&out);
        assert_eq!(
            seen.blocks,
            vec![(
                1,
                FLAG_END_HEADERS,
                list(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", "/etcdserverpb.Maintenance/Status"),
                    (":authority", "127.0.0.1:2379"),
                    ("te", "trailers"),
                ])
            )]
        );
        assert_eq!(seen.frames[0], (0x4, 0, 0, vec![]), "SETTINGS untouched");
        assert_eq!(
            seen.frames.last().map(|f| frame(f.0, f.1, f.2, &f.3)),
            Some(body)
        );
    }

    #[test]
    fn unrepairable_authority_is_dropped() {
        let mut input = PREFACE.to_vec();
        input.extend(headers(
            1,
            &block(&[
                indexed(3),
                indexed(6),
                indexing(4, "/etcdserverpb.KV/Range"),
                indexing(1, "#initially=[http://127.0.0.1:2379]"),
            ]),
        ));
        let seen = server_view(&rewrite(&input, 64));
        assert_eq!(
            seen.blocks[0].2,
            list(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/etcdserverpb.KV/Range")
            ])
        );
    }

    #[test]
    fn block_split_over_continuations_with_padding_and_priority() {
        let fragment = block(&[
            indexed(3),
            indexed(6),
            indexing(4, "/etcdserverpb.KV/Put"),
            indexing(1, "https://127.0.0.1:2379"),
            indexing_new("grpc-timeout", "4999m"),
        ]);
        let (a, rest) = fragment.split_at(3);
        let (b, c) = rest.split_at(rest.len() / 2);
        // HEADERS: pad length 4, priority (exclusive, depends on 0, weight
        // 15), the first 3 bytes, 4 bytes of padding. No END_HEADERS.
        let mut first = vec![4];
        first.extend_from_slice(&[0x80, 0, 0, 0, 15]);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0; 4]);
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &first,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 5, b));
        input.extend(frame(TYPE_CONTINUATION, 0, 5, &[]));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, c));
        for chunk in [1, 2, 1024] {
            let out = rewrite(&input, chunk);
            let seen = server_view(&out);
            assert_eq!(
                seen.blocks,
                vec![(
                    5,
                    FLAG_END_HEADERS | FLAG_END_STREAM | FLAG_PRIORITY,
                    list(&[
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", "/etcdserverpb.KV/Put"),
                        (":authority", "127.0.0.1:2379"),
                        ("grpc-timeout", "4999m"),
                    ])
                )],
                "chunks of {chunk}"
            );
            let (_, _, _, payload) = &seen.frames[1];
            assert_eq!(payload[..5], [0x80, 0, 0, 0, 15], "priority kept");
        }
    }

    /// The client's encoder indexes fields on one request and refers to
    /// them on later ones; once the first request is repaired, the
    /// rewriter's decoder follows the client's table across every later
    /// block, through insertions, evictions and size updates.
    #[test]
    fn follows_the_client_dynamic_table_across_requests() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        // Dynamic table after: te(62) bad-authority(63) path(64).
        input.extend(headers(
            1,
            &block(&[
                indexed(3),
                indexed(6),
                indexing(4, "/etcdserverpb.KV/Range"),
                indexing(1, "http://127.0.0.1:2379"),
                indexing_new("te", "trailers"),
            ]),
        ));
        // Every field from the tables.
        input.extend(headers(
            3,
            &block(&[
                indexed(3),
                indexed(6),
                indexed(64),
                indexed(63),
                indexed(62),
            ]),
        ));
        // A new path goes in first: put(62) te(63) bad(64) path(65).
        input.extend(headers(
            5,
            &block(&[
                indexed(3),
                indexed(6),
                indexing(4, "/etcdserverpb.KV/Put"),
                indexed(64),
                indexed(63),
            ]),
        ));
        // Size updates emptying the table and restoring its size, then
        // fresh fields.
        input.extend(headers(
            7,
            &block(&[
                vec![0x20, 0x3f, 0xe1, 0x1f],
                indexed(3),
                indexed(6),
                indexing(4, "/etcdserverpb.KV/Txn"),
                indexing(1, "https://127.0.0.1:2379"),
                indexing_new("te", "trailers"),
            ]),
        ));
        let seen = server_view(&rewrite(&input, 3));
        let request = |path: &str| {
            list(&[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "127.0.0.1:2379"),
                ("te", "trailers"),
            ])
        };
        let got: Vec<(u32, HeaderList)> = seen.blocks.into_iter().map(|(s, _, l)| (s, l)).collect();
        assert_eq!(
            got,
            vec![
                (1, request("/etcdserverpb.KV/Range")),
                (3, request("/etcdserverpb.KV/Range")),
                (5, request("/etcdserverpb.KV/Put")),
                (7, request("/etcdserverpb.KV/Txn")),
            ]
        );
    }

    /// A first request h2 accepts hands the connection over: what follows
    /// goes to h2 as sent, unparsed (a gRPC client keeps one authority per
    /// connection).
    #[test]
    fn a_good_first_request_hands_the_connection_over() {
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(headers(
            1,
            &block(&[indexed(3), indexed(6), indexing(1, "127.0.0.1:2379")]),
        ));
        input.extend(headers(3, &block(&[indexed(3), indexing(1, "http://x:1")])));
        let mut rewriter = Rewriter::new();
        let mut out = BytesMut::new();
        rewriter.feed(&input, &mut out);
        assert!(rewriter.is_raw());
        assert_eq!(rewriter.passthrough(), usize::MAX);
        assert_eq!(out.to_vec(), input);
    }

    #[test]
    fn large_repaired_block_is_reframed_within_the_frame_size() {
        let big = "x".repeat(40_000);
        let mut input = PREFACE.to_vec();
        input.extend(headers(
            1,
            &block(&[
                indexed(3),
                indexed(6),
                indexing(4, "/etcdserverpb.KV/Range"),
                indexing(1, "http://127.0.0.1:2379"),
                indexing_new("x-big", &big),
            ]),
        ));
        let seen = server_view(&rewrite(&input, 8192));
        assert!(seen.frames.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        assert_eq!(seen.frames.len(), 3, "HEADERS and two CONTINUATIONs");
        assert_eq!(seen.blocks[0].2[4].1, big.as_bytes());
        assert_eq!(seen.blocks[0].2[3].1, b"127.0.0.1:2379");
    }

    /// What the rewriter does not understand goes to h2 exactly as sent.
    #[test]
    fn gives_up_unchanged_on_what_it_does_not_understand() {
        let http1 = b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
        let mut interleaved = PREFACE.to_vec();
        interleaved.extend(frame(TYPE_HEADERS, 0, 1, &indexed(3)));
        interleaved.extend(data(1, b"x"));
        interleaved.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &indexed(6)));
        interleaved.extend(headers(3, &indexing(1, "http://127.0.0.1:2379")));
        let mut undecodable = PREFACE.to_vec();
        undecodable.extend(headers(1, &indexed(70)));
        undecodable.extend(headers(3, &indexing(1, "http://127.0.0.1:2379")));
        let mut stray = PREFACE.to_vec();
        stray.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &indexed(6)));
        let mut truncated = PREFACE.to_vec();
        truncated.extend(frame(
            TYPE_HEADERS,
            0,
            1,
            &indexing(1, "http://127.0.0.1:2379"),
        ));
        truncated.extend(&frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &indexed(6))[..5]);
        let mut oversized = PREFACE.to_vec();
        oversized.extend(frame(
            TYPE_HEADERS,
            0,
            1,
            &indexing(1, "http://127.0.0.1:2379"),
        ));
        for _ in 0..70 {
            oversized.extend(frame(TYPE_CONTINUATION, 0, 1, &[0; 16_000]));
        }
        for (name, input) in [
            ("HTTP/1", http1),
            ("frame inside a block", interleaved),
            ("bad HPACK index", undecodable),
            ("CONTINUATION without HEADERS", stray),
            ("connection ends inside a block", truncated),
            ("block over MAX_BLOCK", oversized),
        ] {
            for chunk in [1, 100, 1 << 21] {
                assert_eq!(rewrite(&input, chunk), input, "{name}, chunks of {chunk}");
            }
        }
    }

    /// Through the AsyncRead: small and large reads, bodies read straight
    /// into the caller's buffer, and h2's own server accepting the result.
    #[tokio::test]
    async fn h2_server_accepts_the_repaired_request() {
        use tokio::io::AsyncWriteExt;

        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        // Within the 65,535-byte window a client has before it hears the
        // server's settings; the 16,000-byte frames exceed h2's reads.
        let body = vec![7u8; 60_000];
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings());
        let fragment = block(&[
            indexed(3),
            indexed(6),
            indexing(4, "/etcdserverpb.Maintenance/Status"),
            indexing(1, "http://127.0.0.1:2379"),
            indexing_new("te", "trailers"),
        ]);
        let (a, b) = fragment.split_at(10);
        bytes.extend(frame(TYPE_HEADERS, 0, 1, a));
        bytes.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        for piece in body.chunks(16_000) {
            bytes.extend(frame(0x0, 0, 1, piece));
        }
        bytes.extend(frame(0x0, FLAG_END_STREAM, 1, &[]));
        let writer = tokio::spawn(async move {
            client.write_all(&bytes).await.expect("write");
            client
        });

        let mut conn = h2::server::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 20)
            .handshake::<_, bytes::Bytes>(FixAuthority::new(server_io))
            .await
            .expect("handshake");
        let (request, _respond) = conn
            .accept()
            .await
            .expect("a request")
            .expect("h2 accepts it");
        assert_eq!(
            request.uri().authority().map(|a| a.as_str()),
            Some("127.0.0.1:2379")
        );
        assert_eq!(request.uri().path(), "/etcdserverpb.Maintenance/Status");
        let mut stream = request.into_body();
        let mut received = Vec::new();
        let driver = tokio::spawn(async move { while conn.accept().await.is_some() {} });
        while let Some(chunk) = stream.data().await {
            let chunk = chunk.expect("body chunk");
            let _ = stream.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        assert_eq!(received, body);
        drop(writer.await.expect("writer"));
        driver.abort();
    }

    /// The bug itself, at h2's level: without the rewriter, h2 answers the
    /// same request with RST_STREAM(PROTOCOL_ERROR); with it, with a request.
    #[tokio::test]
    async fn h2_alone_resets_a_url_authority() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings());
        bytes.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &block(&[
                indexed(3),
                indexed(6),
                indexing(4, "/etcdserverpb.Maintenance/Status"),
                indexing(1, "http://127.0.0.1:2379"),
            ]),
        ));
        for repaired in [false, true] {
            let (mut client, server_io) = tokio::io::duplex(64 * 1024);
            client.write_all(&bytes).await.expect("write");
            let server = tokio::spawn(async move {
                let accepted = if repaired {
                    let mut conn = h2::server::handshake(FixAuthority::new(server_io))
                        .await
                        .expect("handshake");
                    conn.accept().await.map(|r| r.is_ok())
                } else {
                    let mut conn = h2::server::handshake(server_io).await.expect("handshake");
                    conn.accept().await.map(|r| r.is_ok())
                };
                accepted
            });
            if repaired {
                let accepted = server.await.expect("server task");
                assert_eq!(accepted, Some(true), "h2 accepts the repaired request");
                continue;
            }
            // Read the server's frames until the reset of stream 1.
            let mut seen = Vec::new();
            let reset = frame(0x3, 0, 1, &[0, 0, 0, 1]);
            let found = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let mut buf = [0u8; 4096];
                loop {
                    let n = client.read(&mut buf).await.expect("read");
                    assert!(n > 0, "connection closed before a reset: {seen:?}");
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(reset.len()).any(|w| w == reset) {
                        return;
                    }
                }
            })
            .await;
            assert!(found.is_ok(), "RST_STREAM(PROTOCOL_ERROR) on stream 1");
            server.abort();
        }
    }
}
