//! Repairs the `:authority` of requests whose client put a whole URL there.
//!
//! etcdctl 3.4 dials `endpoint status`, `endpoint hashkv` and every
//! `--cluster` command as `passthrough:///http://127.0.0.1:2379`, and its
//! grpc-go then sends the endpoint as written, `http://127.0.0.1:2379`, as
//! the HTTP/2 `:authority`. grpc-go servers (etcd) never judge that field;
//! h2, under hyper and tonic, parses it as a URI authority and answers the
//! request with `RST_STREAM(PROTOCOL_ERROR)` ("malformed headers: malformed
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
//! ([`Rewriter`]) and touches only header blocks (a HEADERS frame and its
//! CONTINUATIONs): each is HPACK-decoded, to keep a copy of the client's
//! dynamic table, and checked by the same parser h2 uses. An `:authority`
//! that h2 accepts is left alone and the block goes on byte for byte. One of
//! the form `scheme://host:port[/…]` becomes `host:port`; one that cannot be
//! repaired (etcd 3.5.0's `#initially=[…]`, a socket path) is dropped, which
//! h2 accepts, as grpc-go servers accept anything there. A repaired block is
//! re-encoded with literals that never enter the dynamic table, so the
//! server's HPACK table stops following the client's; from then on every
//! block of that connection is re-encoded the same way (the server never
//! again needs its table). Every other frame, and the whole server→client
//! direction, passes through untouched.
//!
//! Anything the rewriter does not understand — a stream that does not open
//! with the HTTP/2 preface (an HTTP/1 request), a frame out of place, a
//! block it cannot decode or one over [`MAX_BLOCK`] — makes it give up: what
//! it holds and everything after goes to h2 unchanged, and h2 rejects the
//! connection as it would have anyway.
//!
//! The layer works on the decrypted stream, so with TLS it must wrap the
//! stream the TLS acceptor yields (terminate TLS in the incoming stream, not
//! with tonic's `Server::tls_config`, which wraps after it).
//!
//! Cost: header blocks only. A connection whose authorities are fine (every
//! tonic, Go `clientv3` or etcdctl `get`/`put` connection) pays one HPACK
//! decode and one authority parse per request, and a copy of the bytes it
//! reads; body bytes that fill h2's read buffer are read straight into it.

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
    /// Once a block is re-encoded, the server's dynamic table no longer
    /// matches the client's, and every later block is re-encoded.
    diverged: bool,
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
            diverged: false,
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

    /// Hands what is held to h2 as it came and stops interpreting.
    fn give_up(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.block_raw);
        self.block_raw.clear();
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
            // h2's decoder, in the same state (or, once diverged, seeing
            // these bytes out of context), fails the connection as well.
            self.give_up(out);
            return;
        }
        let authority = self.fields.iter().enumerate().find_map(|(i, (n, v))| {
            (n == b":authority")
                .then(|| (i, repair(v)))
                .filter(|(_, r)| *r != Repair::Keep)
        });
        if authority.is_none() && !self.diverged {
            out.extend_from_slice(&self.block_raw);
        } else {
            self.diverged = true;
            self.encode(authority);
            frame_block(&start, &self.encoded, out);
        }
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
