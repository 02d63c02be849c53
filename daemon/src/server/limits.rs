//! Request-body limits shared by every connection: a total budget of
//! request-body bytes held at once (`server.max_inflight_mb`) and a deadline
//! for a body to arrive (`server.body_timeout_s`). A middleware reserves a
//! request's declared `Content-Length` before the handler runs (503 at once
//! when it does not fit), grows the reservation as undeclared (chunked)
//! bytes arrive, and releases it when the handler has answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body::{Frame, SizeHint};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// The shared budget (cheap to clone).
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Budget>,
}

struct Budget {
    capacity: u64,
    used: AtomicU64,
    body_timeout: Duration,
}

impl Limits {
    /// A budget of `max_inflight_mb` MiB; bodies must arrive within `body_timeout`.
    pub fn new(max_inflight_mb: u64, body_timeout: Duration) -> Limits {
        Limits {
            inner: Arc::new(Budget {
                capacity: max_inflight_mb.saturating_mul(MIB),
                used: AtomicU64::new(0),
                body_timeout,
            }),
        }
    }

    /// Request-body bytes reserved now.
    pub fn in_flight(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Hold `bytes` of the budget for a request that is not an HTTP body
    /// (a decoded gRPC message) until the returned guard drops; `None` when
    /// they do not fit (the caller answers "busy").
    pub fn try_hold(&self, bytes: u64) -> Option<Held> {
        self.inner.try_take(bytes).then(|| Held {
            _share: Reservation {
                budget: self.inner.clone(),
                bytes: AtomicU64::new(bytes),
            },
        })
    }

    /// The budget, in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }
}

/// A share of the budget taken by [`Limits::try_hold`], returned on drop.
pub struct Held {
    _share: Reservation,
}

impl Budget {
    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.capacity)
            })
            .is_ok()
    }
}

/// One request's share of the budget, returned on drop.
struct Reservation {
    budget: Arc<Budget>,
    bytes: AtomicU64,
}

impl Reservation {
    fn grow(&self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        if self.budget.try_take(n) {
            self.bytes.fetch_add(n, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let n = *self.bytes.get_mut();
        self.budget.used.fetch_sub(n, Ordering::AcqRel);
    }
}

const OK: u8 = 0;
const OVER_BUDGET: u8 = 1;
const TIMED_OUT: u8 = 2;

/// The middleware (`axum::middleware::from_fn_with_state(limits, guard)`).
pub async fn guard(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let budget = &limits.inner;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if declared > budget.capacity {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body ({} bytes) is larger than the server's budget for request bodies in flight (server.max_inflight_mb = {} MiB)",
                declared,
                budget.capacity / MIB
            ),
        );
    }
    let reservation = Arc::new(Reservation {
        budget: budget.clone(),
        bytes: AtomicU64::new(0),
    });
    if !reservation.grow(declared) {
        return over_budget(budget);
    }
    let outcome = Arc::new(AtomicU8::new(OK));
    let req = req.map(|body| {
        Body::new(BudgetBody {
            inner: body,
            reservation: reservation.clone(),
            declared_left: declared,
            deadline: Box::pin(tokio::time::sleep(budget.body_timeout)),
            outcome: outcome.clone(),
        })
    });
    let response = next.run(req).await;
    let r = match outcome.load(Ordering::Acquire) {
        OVER_BUDGET => over_budget(budget),
        TIMED_OUT => refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within server.body_timeout_s = {} s",
                budget.body_timeout.as_secs_f64()
            ),
        ),
        _ => response,
    };
    drop(reservation);
    r
}

fn over_budget(budget: &Budget) -> Response {
    let mut r = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the server is busy: request bodies in flight would exceed server.max_inflight_mb = {} MiB ({:.1} MiB in flight); retry later",
            budget.capacity / MIB,
            budget.used.load(Ordering::Relaxed) as f64 / MIB as f64
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// An error answer that also closes the connection (its body may be unread).
fn refuse(status: StatusCode, message: String) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The request body, counted against the budget and bounded in time.
struct BudgetBody {
    inner: Body,
    reservation: Arc<Reservation>,
    /// Bytes of the declared length (already reserved) not yet seen.
    declared_left: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    outcome: Arc<AtomicU8>,
}

/// Why a [`BudgetBody`] stopped (the middleware turns it into the answer).
#[derive(Debug, thiserror::Error)]
enum BodyLimit {
    #[error("request bodies in flight exceed the server's budget")]
    OverBudget,
    #[error("the request body did not arrive in time")]
    TimedOut,
}

impl http_body::Body for BudgetBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let covered = n.min(this.declared_left);
                    this.declared_left -= covered;
                    if !this.reservation.grow(n - covered) {
                        this.outcome.store(OVER_BUDGET, Ordering::Release);
                        return Poll::Ready(Some(Err(BodyLimit::OverBudget.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.outcome.store(TIMED_OUT, Ordering::Release);
                    return Poll::Ready(Some(Err(BodyLimit::TimedOut.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_returned() {
        let l = Limits::new(1, Duration::from_secs(1));
        let r = Reservation {
            budget: l.inner.clone(),
            bytes: AtomicU64::new(0),
        };
        assert!(r.grow(MIB / 2));
        assert!(!r.grow(MIB), "over the budget");
        assert!(r.grow(MIB / 2));
        assert_eq!(l.in_flight(), MIB);
        assert!(!l.inner.try_take(1));
        drop(r);
        assert_eq!(l.in_flight(), 0);
    }
}
