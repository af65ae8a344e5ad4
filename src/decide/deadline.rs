//! A deadline for the decision path that costs almost nothing per request. A tokio
//! timer per request (an entry in the runtime's timer wheel, inserted and cancelled for
//! every check) measurably slowed the hot path (`scripts/bench --only hot`: 0.81 against
//! 0.87-0.97 without it), while a decision takes microseconds and the deadline is a
//! second. Instead, each worker thread keeps a list of the requests still waiting and
//! one ticker wakes them every [`TICK`], only while some are waiting; a woken request
//! that has passed its deadline gives up. Precision is one tick; a request is only woken
//! once its deadline has passed. Times are tokio's
//! (`Instant` is the system's monotonic clock, unless a test pauses tokio's clock).

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// How often waiting requests look at their deadline.
pub const TICK: Duration = Duration::from_millis(10);

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

struct Waiting {
    deadline: Instant,
    waker: Waker,
    /// Set once the request no longer waits, so the ticker does not wake it for nothing.
    done: Rc<Cell<bool>>,
}

thread_local! {
    static WAITING: RefCell<Vec<Waiting>> = const { RefCell::new(Vec::new()) };
    static TICKING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `fut` until it finishes or `deadline` passes (checked at least every [`TICK`]).
/// Must run on an actix (tokio local) runtime. (It takes the future pinned where the
/// caller keeps it: moved in, it would be stored twice in this one's state.)
pub async fn within<F: Future>(
    deadline: Instant,
    mut fut: Pin<&mut F>,
) -> Result<F::Output, Elapsed> {
    let mut registered: Option<Rc<Cell<bool>>> = None;
    let out = poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(Elapsed));
        }
        if let Some(old) = registered.take() {
            old.set(true);
        }
        let done = Rc::new(Cell::new(false));
        WAITING.with(|w| {
            w.borrow_mut().push(Waiting {
                deadline,
                waker: cx.waker().clone(),
                done: done.clone(),
            })
        });
        registered = Some(done);
        ensure_ticking();
        Poll::Pending
    })
    .await;
    if let Some(r) = registered {
        r.set(true);
    }
    out
}

/// Clears the ticking flag however the ticker ends (returned, or dropped with its
/// runtime), so a later request on this thread starts a new one.
struct TickerGuard;

impl Drop for TickerGuard {
    fn drop(&mut self) {
        TICKING.with(|t| t.set(false));
    }
}

/// Starts this thread's ticker unless it runs; it stops once nothing waits. Each tick
/// forgets the requests that finished and wakes only those past their deadline.
fn ensure_ticking() {
    if TICKING.with(|t| t.replace(true)) {
        return;
    }
    actix_web::rt::spawn(async {
        let _guard = TickerGuard;
        let start = Instant::now() + TICK;
        let mut every = actix_web::rt::time::interval_at(start, TICK);
        loop {
            every.tick().await;
            let now = Instant::now();
            let due: Vec<Waiting> = WAITING.with(|w| {
                let mut w = w.borrow_mut();
                w.retain(|e| !e.done.get());
                let (due, keep) = std::mem::take(&mut *w)
                    .into_iter()
                    .partition(|e| e.deadline <= now);
                *w = keep;
                due
            });
            for w in due {
                w.waker.wake();
            }
            if WAITING.with(|w| w.borrow().is_empty()) {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    #[actix_rt::test]
    async fn answers_in_time_and_gives_up_one_tick_after_the_deadline() {
        tokio::time::pause();
        let start = Instant::now();
        let soon = start + Duration::from_secs(3600);
        assert_eq!(within(soon, pin!(async { 7 })).await, Ok(7));
        assert_eq!(
            within(start, pin!(std::future::pending::<()>())).await,
            Err(Elapsed)
        );

        // The paused clock only moves with the ticker: given up at the first tick after
        // the deadline (tokio's timers round to the millisecond).
        let deadline = start + Duration::from_millis(55);
        assert_eq!(
            within(deadline, pin!(std::future::pending::<()>())).await,
            Err(Elapsed)
        );
        let waited = Instant::now() - start;
        assert!(
            waited >= Duration::from_millis(55) && waited <= Duration::from_millis(55) + TICK,
            "{waited:?}"
        );
        // Nothing waits any more: the registration was marked done.
        assert!(WAITING.with(|w| w.borrow().iter().all(|w| w.done.get())));
    }
}
