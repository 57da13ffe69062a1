//! What happens when part of the member fails: the supervision tree.
//!
//! ```text
//!  cairn process ── stops, exit code 70, one `fatal:` log line ──▶ systemd / Kubernetes restarts it
//!   ├─ RaftNode          (raft arbiter)    ┐ core: a panic in any of them, or one of them
//!   ├─ Storage           (apply arbiter)   │ stopping outside a graceful shutdown, stops the
//!   ├─ LeaseKeeper       (lease arbiter)   │ process. Nothing half-alive: the raft log holds
//!   ├─ WatchBroadcaster  (watch arbiter)   ┘ every acknowledged write and a restart re-applies it.
//!   ├─ gRPC handlers (tokio runtime)         a panic stops the process too (as a panic in an
//!   │                                        etcd handler does)
//!   └─ restartable parts, run under [`restartable`]: a panic is caught, logged, and the
//!      part restarts by itself without touching the raft log or anything else
//!        · a Watch stream's sender: its watchers replay from their last delivered revision
//!        · a PeerLink (with clustering): it reconnects
//! ```
//!
//! Why: an actix actor whose handler panics just disappears, and messages
//! sent to it with `do_send` are dropped; a member whose Storage died would
//! fsync writes and never answer them while health said SERVING. So
//! [`install`] sets a panic hook that stops the process on any panic
//! outside a restartable part, and every core actor holds a [`Lifeline`]
//! that does the same if the actor is dropped without a graceful shutdown.
//! Health reports NOT_SERVING meanwhile (no leader, or shutting down).

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use actix::dev::channel::{channel, AddressReceiver};
use actix::prelude::*;

use crate::msg::MAILBOX_CAPACITY;

/// The exit code of a member that stopped on a fault (sysexits' EX_SOFTWARE).
pub const FATAL_EXIT_CODE: i32 = 70;

/// Set by [`install`]: only a real server stops the process (unit tests
/// build and drop actors freely).
static ARMED: AtomicBool = AtomicBool::new(false);
/// Set when a graceful shutdown begins: actors may then stop.
static STOPPING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Depth of [`restartable`] polls on this thread.
    static RESTARTABLE: Cell<u32> = const { Cell::new(0) };
}

/// Installs the panic hook and arms every [`Lifeline`]. Called once by the
/// server before any actor starts.
pub fn install() {
    ARMED.store(true, Ordering::SeqCst);
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = payload_text(info.payload());
        if RESTARTABLE.with(|depth| depth.get() > 0) {
            tracing::error!(
                thread,
                at,
                "panic in a restartable part, which restarts: {what}"
            );
            return;
        }
        tracing::error!(thread, at, "fatal: panic: {what}; stopping the member");
        std::process::exit(FATAL_EXIT_CODE);
    }));
}

static STOP_REQUEST: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Asks the server for a graceful shutdown, as SIGTERM does (a member
/// removed from its cluster stops itself this way).
pub fn request_stop() {
    STOP_REQUEST.notify_one();
}

/// Completes once [`request_stop`] was called.
pub async fn stop_requested() {
    STOP_REQUEST.notified().await;
}

/// A graceful shutdown has begun: core actors may stop from now on.
pub fn begin_shutdown() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Held by each core actor: dropping it outside a graceful shutdown stops
/// the process (an actor stopped, or was dropped by its arbiter).
pub struct Lifeline {
    actor: &'static str,
}

impl Lifeline {
    pub fn new(actor: &'static str) -> Lifeline {
        Lifeline { actor }
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        if ARMED.load(Ordering::SeqCst) && !STOPPING.load(Ordering::SeqCst) {
            tracing::error!(
                actor = self.actor,
                "fatal: core actor stopped; stopping the member"
            );
            std::process::exit(FATAL_EXIT_CODE);
        }
    }
}

/// Runs `fut` as a restartable part: a panic inside it is caught and
/// returned as `Err(message)` for the caller to restart it; the panic hook
/// logs it and lets the process live.
pub fn restartable<F: Future>(fut: F) -> Restartable<F> {
    Restartable {
        inner: Box::pin(fut),
    }
}

/// See [`restartable`].
pub struct Restartable<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Restartable<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match restartable_blocking(|| self.inner.as_mut().poll(cx)) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// [`restartable`] for blocking work on a thread of its own (the body of a
/// `spawn_blocking`), and for each poll of a restartable future: a panic in
/// `f` is logged and returned as an error, and the member goes on.
pub fn restartable_blocking<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    RESTARTABLE.with(|depth| depth.set(depth.get() + 1));
    let done = catch_unwind(AssertUnwindSafe(f));
    RESTARTABLE.with(|depth| depth.set(depth.get() - 1));
    done.map_err(|panic| payload_text(panic.as_ref()))
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "(non-string panic)".to_string()
    }
}

/// An actor's mailbox, made before the actor: its address can be handed to
/// the actors built before it, so every actor gets its peers at
/// construction (no late `Set*` messages that fail silently if forgotten).
pub struct Mailbox<A: Actor<Context = Context<A>>> {
    rx: AddressReceiver<A>,
}

/// A new mailbox (of [`MAILBOX_CAPACITY`]) and the address that reaches it.
pub fn mailbox<A: Actor<Context = Context<A>>>() -> (Addr<A>, Mailbox<A>) {
    mailbox_of(MAILBOX_CAPACITY)
}

/// A new mailbox of `capacity` messages (past it, `send` waits and
/// `try_send` fails; `do_send` ignores it).
pub fn mailbox_of<A: Actor<Context = Context<A>>>(capacity: usize) -> (Addr<A>, Mailbox<A>) {
    let (tx, rx) = channel(capacity);
    (Addr::new(tx), Mailbox { rx })
}

impl<A: Actor<Context = Context<A>>> Mailbox<A> {
    /// Builds the actor on `arbiter`'s thread and starts it on this mailbox.
    pub fn start_on(self, arbiter: &ArbiterHandle, make: impl FnOnce() -> A + Send + 'static) {
        let rx = self.rx;
        arbiter.spawn_fn(move || {
            Context::with_receiver(rx).run(make());
        });
    }
}
