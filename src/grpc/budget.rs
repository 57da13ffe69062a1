//! The member-wide memory budget of Range responses
//! (`--max-range-bytes-in-flight`, default 1 GiB).
//!
//! A Range first reads a sample of its records (`mvcc::range::SAMPLE`,
//! spread over the range) and asks its [`Charge`] to reserve the size they
//! extrapolate to, plus a margin, at once; only then does it read the
//! values, telling the charge each record's size. The first [`FREE_BYTES`]
//! of a response are not counted: a small range never touches the shared
//! counter. A response that grows past its reservation takes more in
//! [`CHUNK`] steps, without waiting. When the budget has no room, the read
//! stops, gives back what it took, waits (up to [`WAIT`]) until the room
//! it needs is free and reads again: a refused Range has read the index
//! and its sample, not its values.
//! Nothing is held while waiting, so two large ranges never wait on each
//! other. Out of time, the client gets etcd's `etcdserver: too many
//! requests` (ResourceExhausted) and nothing has changed (a Range writes
//! nothing). A response larger than the whole budget is served only while
//! it is the only one holding bytes.
//!
//! The bytes stay taken until the response has left: the handler puts the
//! charge in the response's extensions and [`HoldBudgetLayer`] moves it
//! into the HTTP body, which is dropped once sent (or once the client has
//! gone). The budget thus covers the records while they are read and the
//! encoded message while it waits in the HTTP/2 send buffers.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::EtcdError;

/// Responses smaller than this do not count against the budget.
pub const FREE_BYTES: u64 = 1 << 20;

/// A growing response takes bytes from the budget in steps this large.
pub const CHUNK: u64 = 1 << 20;

/// How long a range waits for room before it is refused.
pub const WAIT: Duration = Duration::from_secs(2);

/// The default of `--max-range-bytes-in-flight`: 1 GiB.
pub const DEFAULT_BYTES: u64 = 1 << 30;

/// Bytes of Range responses in flight, member-wide.
#[derive(Debug)]
pub struct RangeBudget {
    capacity: u64,
    used: AtomicU64,
    released: Notify,
}

impl RangeBudget {
    /// A budget of `capacity` bytes; 0 means unlimited.
    pub fn new(capacity: u64) -> Arc<RangeBudget> {
        Arc::new(RangeBudget {
            capacity: if capacity == 0 { u64::MAX } else { capacity },
            used: AtomicU64::new(0),
            released: Notify::new(),
        })
    }

    /// Bytes currently taken.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `want` bytes for a response already holding `mine`, if they
    /// fit, or if that response is the only holder.
    fn try_take(&self, want: u64, mine: u64) -> bool {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            let fits = cur.saturating_add(want) <= self.capacity || cur == mine;
            if !fits {
                return false;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + want,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn give_back(&self, bytes: u64) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.released.notify_waiters();
        }
    }

    /// Waits until `need` bytes would fit (or nothing is taken), or until
    /// `deadline`; false when out of time.
    pub async fn wait_room(&self, need: u64, deadline: Instant) -> bool {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let cur = self.used();
            if cur == 0 || cur.saturating_add(need) <= self.capacity {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return false;
            }
        }
    }
}

/// What one response has counted and taken; gives the bytes back when
/// dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<RangeBudget>,
    /// The size of the records read so far.
    counted: u64,
    /// Bytes taken from the budget.
    held: u64,
    /// What the response asked to reserve (its estimate and margin).
    wanted: u64,
}

/// A reservation is the estimate plus this fraction of it (1/8), because
/// the estimate comes from a sample and values vary in size.
const MARGIN_DIV: u64 = 8;

impl Charge {
    pub fn new(budget: Arc<RangeBudget>) -> Charge {
        Charge {
            budget,
            counted: 0,
            held: 0,
            wanted: 0,
        }
    }

    /// Takes the whole response's estimated size (and a margin) at once,
    /// before the read goes on; `TooManyRequests` if it does not fit.
    /// Under [`FREE_BYTES`] nothing is taken.
    pub fn reserve(&mut self, estimate: u64) -> Result<(), EtcdError> {
        let want = estimate.saturating_add(estimate / MARGIN_DIV);
        self.wanted = self.wanted.max(want);
        if want < FREE_BYTES || want <= self.held {
            return Ok(());
        }
        if !self.budget.try_take(want - self.held, self.held) {
            return Err(EtcdError::TooManyRequests);
        }
        self.held = want;
        Ok(())
    }

    /// Counts a record of `bytes`; `TooManyRequests` if the budget has no
    /// room for the response grown by it.
    pub fn add(&mut self, bytes: usize) -> Result<(), EtcdError> {
        self.counted = self.counted.saturating_add(bytes as u64);
        if self.counted < FREE_BYTES || self.counted <= self.held {
            return Ok(());
        }
        let want = (self.counted - self.held).max(CHUNK);
        if !self.budget.try_take(want, self.held) {
            return Err(EtcdError::TooManyRequests);
        }
        self.held += want;
        Ok(())
    }

    /// The size of the records counted so far.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// Bytes taken from the budget.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// The room this response needs: what it asked to reserve or, if it
    /// grew past that, what it counted.
    pub fn needed(&self) -> u64 {
        self.wanted.max(self.counted)
    }
}

impl crate::mvcc::range::Meter for Charge {
    fn reserve(&mut self, estimate: u64) -> Result<(), EtcdError> {
        Charge::reserve(self, estimate)
    }
    fn add(&mut self, bytes: usize) -> Result<(), EtcdError> {
        Charge::add(self, bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// A response's charge, carried in its extensions from the handler to
/// [`HoldBudgetLayer`] (extensions must be `Clone`).
#[derive(Clone, Debug)]
pub struct HeldCharge(pub Arc<Charge>);

/// Around the gRPC router: keeps a response's [`HeldCharge`] until its
/// body is dropped. Responses without one pass untouched.
#[derive(Clone, Copy, Default)]
pub struct HoldBudgetLayer;

impl<S> tower_layer::Layer<S> for HoldBudgetLayer {
    type Service = HoldBudget<S>;
    fn layer(&self, inner: S) -> HoldBudget<S> {
        HoldBudget { inner }
    }
}

#[derive(Clone)]
pub struct HoldBudget<S> {
    inner: S,
}

type Hold = fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;

impl<S, B> tower_service::Service<http::Request<B>> for HoldBudget<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, Hold>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use futures::TryFutureExt;
        let hold: Hold = |mut resp| match resp.extensions_mut().remove::<HeldCharge>() {
            None => resp,
            Some(charge) => resp.map(|body| {
                tonic::body::Body::new(Holding {
                    body,
                    rest: bytes::Bytes::new(),
                    _charge: charge,
                })
            }),
        };
        self.inner.call(req).map_ok(hold)
    }
}

/// The encoded message reaches hyper in pieces this large.
const SLICE: usize = 256 << 10;

/// A response body that keeps its charge until it is dropped, and hands
/// the encoded message to hyper in [`SLICE`]s (views of one buffer, no
/// copy). hyper asks for the next piece only once HTTP/2 flow control has
/// room for it, and ends the body right after the last one: so the charge
/// is held until the message has been sent but for its last piece, not
/// only until it has been handed to the HTTP/2 send buffer in one go.
struct Holding {
    body: tonic::body::Body,
    /// What is left of the data frame being sliced.
    rest: bytes::Bytes,
    _charge: HeldCharge,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.rest.is_empty() {
            let frame = match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            match frame.into_data() {
                Ok(data) => self.rest = data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            }
        }
        let n = self.rest.len().min(SLICE);
        let piece = self.rest.split_to(n);
        Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.body.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// Waits for room and reads again, up to [`WAIT`] in all: `read` is run
/// with a fresh [`Charge`] each time, and its charge is returned with its
/// result. `read` fails with `TooManyRequests` when the charge ran out;
/// it is run again only once the room it needed is free (a Range reserves
/// its estimated size before reading values, so a refused Range has read
/// the index and a sample of records, not the values).
pub async fn with_budget<T, E>(
    budget: &Arc<RangeBudget>,
    mut read: impl FnMut(&mut Charge) -> Result<T, E>,
    too_many: impl Fn(&E) -> bool,
) -> Result<(T, Charge), E>
where
    E: From<EtcdError>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let mut charge = Charge::new(budget.clone());
        match read(&mut charge) {
            Err(e) if too_many(&e) => {
                let need = charge.needed();
                drop(charge);
                if !budget.wait_room(need, deadline).await {
                    return Err(EtcdError::TooManyRequests.into());
                }
            }
            other => return other.map(|v| (v, charge)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_responses_are_free() {
        let budget = RangeBudget::new(4 * CHUNK);
        let mut c = Charge::new(budget.clone());
        for _ in 0..100 {
            c.add(1000).expect("small");
        }
        assert_eq!(budget.used(), 0);
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn a_growing_response_takes_chunks_and_gives_them_back() {
        let budget = RangeBudget::new(8 * CHUNK);
        let mut c = Charge::new(budget.clone());
        c.add(FREE_BYTES as usize).expect("first chunk");
        assert_eq!(budget.used(), CHUNK);
        c.add(CHUNK as usize / 2).expect("second chunk");
        assert_eq!(budget.used(), 2 * CHUNK);
        c.add(10).expect("within the second chunk");
        assert_eq!(budget.used(), 2 * CHUNK);
        drop(c);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_response_past_the_budget_is_refused_while_others_hold() {
        let budget = RangeBudget::new(4 * CHUNK);
        let mut holder = Charge::new(budget.clone());
        holder.add(3 * CHUNK as usize).expect("holder fits");
        let mut big = Charge::new(budget.clone());
        big.add(FREE_BYTES as usize).expect("one chunk fits");
        assert!(matches!(
            big.add(CHUNK as usize),
            Err(EtcdError::TooManyRequests)
        ));
        drop(holder);
        drop(big);
        assert_eq!(budget.used(), 0);
        // Alone, a response may exceed the budget.
        let mut alone = Charge::new(budget.clone());
        alone.add(10 * CHUNK as usize).expect("alone");
        alone.add(10 * CHUNK as usize).expect("still alone");
        assert_eq!(budget.used(), 20 * CHUNK);
        let mut second = Charge::new(budget.clone());
        second.add(FREE_BYTES as usize - 1).expect("small is free");
        assert!(second.add(1).is_err(), "no room next to an oversized one");
    }

    /// A store of `n` records of 1 KiB values that counts its record reads.
    struct CountingView {
        n: usize,
        reads: std::cell::Cell<usize>,
    }

    impl crate::mvcc::ReadView for CountingView {
        fn rev(&self) -> i64 {
            self.n as i64 + 1
        }
        fn compact_rev(&self) -> i64 {
            0
        }
        fn live_revisions(
            &self,
            _: &crate::mvcc::KeyRange,
            _: i64,
        ) -> Result<Vec<crate::mvcc::Revision>, crate::mvcc::ReadError> {
            Ok((0..self.n)
                .map(|i| crate::mvcc::Revision::new(i as i64 + 2, 0))
                .collect())
        }
        fn record(
            &self,
            rev: crate::mvcc::Revision,
        ) -> Result<crate::proto::mvccpb::KeyValue, crate::error::StorageError> {
            self.reads.set(self.reads.get() + 1);
            Ok(crate::proto::mvccpb::KeyValue {
                key: format!("k/{:08}", rev.main).into_bytes(),
                value: vec![b'v'; 1024],
                mod_revision: rev.main,
                create_revision: rev.main,
                version: 1,
                lease: 0,
            })
        }
    }

    fn metered(
        view: &CountingView,
        charge: &mut Charge,
    ) -> Result<crate::proto::etcdserverpb::RangeResponse, crate::mvcc::ReadError> {
        let req = crate::proto::etcdserverpb::RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            ..Default::default()
        };
        crate::mvcc::range::range_metered(view, &req, charge)
    }

    #[test]
    fn a_refused_range_reads_no_more_than_its_sample() {
        // 4,000 records of about 1 KiB: a 4 MiB response, next to another
        // response holding the whole 4 MiB budget.
        let budget = RangeBudget::new(4 * CHUNK);
        let mut holder = Charge::new(budget.clone());
        holder.add(4 * CHUNK as usize).expect("holder fits");
        let view = CountingView {
            n: 4000,
            reads: std::cell::Cell::new(0),
        };
        let mut charge = Charge::new(budget.clone());
        let refused = metered(&view, &mut charge);
        assert!(matches!(
            refused,
            Err(crate::mvcc::ReadError::Client(EtcdError::TooManyRequests))
        ));
        assert!(
            view.reads.get() <= crate::mvcc::range::SAMPLE,
            "a refused range read {} records, more than its sample",
            view.reads.get()
        );
        drop(charge);
        drop(holder);

        // With room, it is served, reading each record once.
        view.reads.set(0);
        let mut charge = Charge::new(budget.clone());
        let served = metered(&view, &mut charge).expect("served with room");
        assert_eq!(served.kvs.len(), 4000);
        assert_eq!(view.reads.get(), 4000);
        assert!(charge.held() >= charge.counted(), "reserved up front");
    }

    #[tokio::test]
    async fn with_budget_waits_for_room_then_gives_up() {
        let budget = RangeBudget::new(4 * CHUNK);
        let mut holder = Charge::new(budget.clone());
        holder.add(4 * CHUNK as usize).expect("holder fits");
        let read = |c: &mut Charge| c.add(2 * CHUNK as usize).map(|_| ());
        let start = Instant::now();
        let refused = with_budget(&budget, read, |e| matches!(e, EtcdError::TooManyRequests)).await;
        assert!(matches!(refused, Err(EtcdError::TooManyRequests)));
        assert!(start.elapsed() >= WAIT);

        // Room given back while waiting: the read is retried and succeeds.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                with_budget(&budget, read, |e| matches!(e, EtcdError::TooManyRequests))
                    .await
                    .map(|(_, c)| c.held())
            })
        };
        tokio::task::yield_now().await;
        drop(holder);
        let held = waiter.await.expect("join").expect("served once room came");
        assert!(held >= 2 * CHUNK);
        assert_eq!(budget.used(), 0);
    }
}
