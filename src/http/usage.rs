//! What a response says a request used, charged to its config's limits of tokens or
//! bytes after the request was admitted (see `limiter::Mode::Charge`): the value of a
//! limit's `cost_from` response header, charged when the response head arrives, and,
//! through the reverse proxy, the bytes of the response body, charged as it streams.

use super::AppState;
use crate::actors::Via;
use crate::config::MAX_UNITS;
use crate::limiter::Unit;
use crate::policy::{Kind, Policy};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::web::{self, Bytes};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Bytes of a body charged at once: a streamed body is charged each time this much more
/// has been sent, and what is left when it ends.
pub const CHARGE_EVERY: u64 = 64 * 1024;

/// What a request whose body declares `length()` bytes takes up front of `policy`'s
/// limits of bytes: its length (read only under such limits), or nothing when they
/// are charged from a response header. `Err(quota)` when it never fits: above the
/// smallest quota of those limits (the caller answers with an error, not a 429 that
/// waiting could not clear).
pub fn bytes_up_front(policy: &Policy, length: impl FnOnce() -> u64) -> Result<u64, u64> {
    let mut bytes = policy
        .limits
        .iter()
        .filter(|l| l.unit == Unit::Bytes)
        .peekable();
    match bytes.peek() {
        None => Ok(0),
        Some(l) if l.cost_header.is_some() => Ok(0),
        Some(_) => {
            let length = length();
            match bytes.map(|l| l.limit.quota()).min() {
                Some(quota) if length > quota => Err(quota),
                _ => Ok(length),
            }
        }
    }
}

/// Whether a request under `policy` may be charged after its response: it has limits
/// of tokens or bytes.
pub fn charges_after(policy: &Policy) -> bool {
    policy.kind.is_metered() || policy.groups.iter().any(|g| g.kind.is_metered())
}

/// Charges what the response `res` of an admitted request says it used: each limit
/// of tokens or bytes with a `cost_from` header is charged that header's value (a
/// missing or malformed one charges 1, counted in `ratewarden_cost_header_missing_total`)
/// before the response is passed on; through the reverse proxy (`via`), limits of
/// bytes without one are charged the body's bytes as it streams. A charge that fails
/// (the limiter is unreachable) is logged: the response is still passed on.
pub async fn charge_response(
    state: &web::Data<AppState>,
    values: &[Arc<str>],
    policy: &Arc<Policy>,
    via: Via,
    res: ServiceResponse<BoxBody>,
) -> ServiceResponse<BoxBody> {
    let mut streamed = Vec::new();
    for (value, part) in policy.metered_parts() {
        let value = values.get(value).unwrap_or(&values[0]);
        match (&part.limits[0].cost_header, part.kind) {
            (Some(name), _) => {
                let cost = match res
                    .headers()
                    .get(&**name)
                    .map(|v| header_units(v.as_bytes()))
                {
                    Some(Some(n)) => n,
                    // An upstream that failed (or could not be reached) said nothing of
                    // what was used: nothing is charged, and it is not a missing header.
                    None if res.status().is_server_error() => continue,
                    _ => {
                        for l in part.limits.iter() {
                            state.metrics.cost_header_missing(&part.endpoint, &l.name);
                        }
                        1
                    }
                };
                if state.decider.charge_part(value, part, cost).await.is_err() {
                    log::warn!("{value:?}: could not charge {cost} to {}", part.endpoint);
                }
            }
            (None, Kind::Bytes) if via == Via::Proxy => {
                streamed.push((value.clone(), part.clone()))
            }
            _ => {}
        }
    }
    if streamed.is_empty() {
        return res;
    }
    let usage = Arc::new(Usage {
        state: state.clone(),
        parts: streamed,
    });
    res.map_body(|_, body| {
        Metered {
            body,
            usage,
            pending: 0,
            charging: None,
            ended: false,
        }
        .boxed()
    })
}

/// A cost header's units: a whole number, at most [`MAX_UNITS`] (more digits than that
/// count as the most); `None` for anything else.
fn header_units(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits)
        .ok()?
        .parse::<u64>()
        .unwrap_or(u64::MAX);
    Some(n.min(MAX_UNITS))
}

/// Where a streamed body's bytes are charged: each part of bytes, under its value.
struct Usage {
    state: web::Data<AppState>,
    parts: Vec<(Arc<str>, Arc<Policy>)>,
}

impl Usage {
    /// Charges `bytes` to every part.
    fn charge(self: &Arc<Self>, bytes: u64) -> Pin<Box<dyn Future<Output = ()>>> {
        let usage = self.clone();
        Box::pin(async move {
            for (value, part) in &usage.parts {
                let decider = &usage.state.decider;
                if decider.charge_part(value, part, bytes).await.is_err() {
                    log::warn!(
                        "{value:?}: could not charge {bytes} bytes to {}",
                        part.endpoint
                    );
                }
            }
        })
    }
}

/// A response body whose bytes are charged as they are sent: every [`CHARGE_EVERY`]
/// bytes, and the rest when it ends. The next chunk is read only once the last charge
/// is made, and the end is passed on only after the last one: a client that has read
/// the whole body finds it charged. A body cut short (the client gone) is charged what
/// was sent.
struct Metered {
    body: BoxBody,
    usage: Arc<Usage>,
    /// Bytes sent and not charged yet.
    pending: u64,
    /// The charge being made.
    charging: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Whether the body ended.
    ended: bool,
}

impl MessageBody for Metered {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(charge) = &mut this.charging {
                ready!(charge.as_mut().poll(cx));
                this.charging = None;
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.body).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    this.pending += chunk.len() as u64;
                    if this.pending >= CHARGE_EVERY {
                        this.charging = Some(this.usage.charge(std::mem::take(&mut this.pending)));
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                // What was sent is charged when this is dropped.
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.ended = true;
                    if this.pending > 0 {
                        this.charging = Some(this.usage.charge(std::mem::take(&mut this.pending)));
                    }
                }
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // A charge under way, and what was sent since, are made all the same.
        let charging = self.charging.take();
        let pending = std::mem::take(&mut self.pending);
        if charging.is_none() && pending == 0 {
            return;
        }
        let rest = (pending > 0).then(|| self.usage.charge(pending));
        actix_web::rt::spawn(async move {
            if let Some(charge) = charging {
                charge.await;
            }
            if let Some(charge) = rest {
                charge.await;
            }
        });
    }
}
