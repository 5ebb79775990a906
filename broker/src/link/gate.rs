//! The ordered in-flight window of one connection.
//!
//! Each QoS 1/2 publish waits here for its report (for a routed publish: every
//! matching route's Kafka delivery report, see [`AllDelivered`]) and is
//! released strictly in arrival order, so acknowledgements go out in the order
//! the publishes came in (MQTT 4.6) and messages reach the router in that
//! order. It never releases an entry as delivered before its report is
//! positive, and never before the entries ahead of it.
//!
//! Generic over the report future, so that promise is tested below with
//! reports the test completes by hand.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::stream::{FuturesOrdered, StreamExt};
use tributary_bridge::spool::{SpoolAck, SpoolError};
use tributary_bridge::{DeliveryError, PendingDelivery};

use crate::events;

/// A released entry: what was waiting, and its report.
pub struct Released<T, E> {
    pub ticket: T,
    pub outcome: Result<(), E>,
    /// When the publish was read from the device.
    pub received: Instant,
}

/// The window: entries in arrival order, each with its pending report.
pub struct Gate<T, R: Future> {
    reports: FuturesOrdered<R>,
    tickets: VecDeque<(T, Instant)>,
}

impl<T, R: Future> Default for Gate<T, R> {
    fn default() -> Self {
        Gate {
            reports: FuturesOrdered::new(),
            tickets: VecDeque::new(),
        }
    }
}

impl<T, E, R: Future<Output = Result<(), E>>> Gate<T, R> {
    /// Entries waiting (the in-flight count the window limits).
    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// Adds an entry behind all others; it is released once `report` is
    /// ready and every entry ahead of it has been released.
    pub fn push(&mut self, ticket: T, received: Instant, report: R) {
        self.reports.push_back(report);
        self.tickets.push_back((ticket, received));
        events::InFlightChanged { delta: 1 }.emit();
    }

    /// The next entry in arrival order, once its report is in.
    pub fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<Option<Released<T, E>>> {
        match self.reports.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(outcome)) => match self.tickets.pop_front() {
                Some((ticket, received)) => {
                    events::InFlightChanged { delta: -1 }.emit();
                    Poll::Ready(Some(Released {
                        ticket,
                        outcome,
                        received,
                    }))
                }
                // One ticket is pushed with every report, so this cannot be;
                // should it ever, nothing is released.
                None => Poll::Ready(None),
            },
        }
    }

    /// Waits for the next release; pending forever when empty (use as a
    /// `select!` branch guarded by `!is_empty()`).
    pub async fn next(&mut self) -> Option<Released<T, E>> {
        std::future::poll_fn(|cx| self.poll_release(cx)).await
    }
}

impl<T, R: Future> Drop for Gate<T, R> {
    fn drop(&mut self) {
        // Entries dropped unreleased were never acknowledged; the device re-sends.
        if !self.tickets.is_empty() {
            events::InFlightChanged {
                delta: -(self.tickets.len() as i64),
            }
            .emit();
        }
    }
}

/// One report a publish waits for: Kafka's on a record, or the spool's on
/// the records of all its routes (durable there, so they will reach Kafka).
pub enum Report {
    Kafka(PendingDelivery),
    Spooled(SpoolAck),
    /// A report made of several steps (a record that may end in the
    /// dead-letter topic); only for routes that need it.
    Boxed(Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send>>),
}

impl Future for Report {
    type Output = Result<(), DeliveryError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Report::Kafka(delivery) => Pin::new(delivery).poll(cx).map(|r| r.map(|_| ())),
            Report::Spooled(ack) => Pin::new(ack).poll(cx).map(|answer| match answer {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(SpoolError::Full { .. } | SpoolError::BatchTooLarge { .. }))
                | Ok(Err(SpoolError::DiskFull { .. })) => Err(DeliveryError::SpoolFull),
                Ok(Err(_)) | Err(_) => Err(DeliveryError::SpoolFailed),
            }),
            Report::Boxed(report) => report.as_mut().poll(cx),
        }
    }
}

/// The report of a publish routed to Kafka: ready once every matching route's
/// delivery report is in, positive only if all of them are. With no routes it
/// is ready at once; a record that could not even be queued makes it a
/// failure at once.
pub struct AllDelivered {
    pending: Vec<Option<Report>>,
    failed: Option<DeliveryError>,
}

impl AllDelivered {
    pub fn new(deliveries: Result<Vec<Report>, DeliveryError>) -> AllDelivered {
        match deliveries {
            Ok(pending) => AllDelivered {
                pending: pending.into_iter().map(Some).collect(),
                failed: None,
            },
            Err(error) => AllDelivered {
                pending: Vec::new(),
                failed: Some(error),
            },
        }
    }
}

impl Future for AllDelivered {
    type Output = Result<(), DeliveryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut waiting = false;
        for slot in &mut this.pending {
            let Some(delivery) = slot.as_mut() else {
                continue;
            };
            match Pin::new(delivery).poll(cx) {
                Poll::Pending => waiting = true,
                Poll::Ready(report) => {
                    *slot = None;
                    if let Err(error) = report {
                        // A record kept as a dead letter is the mildest
                        // failure: any other one decides the answer.
                        let replaces = match &this.failed {
                            None => true,
                            Some(DeliveryError::DeadLettered(_)) => {
                                !matches!(error, DeliveryError::DeadLettered(_))
                            }
                            Some(_) => false,
                        };
                        if replaces {
                            this.failed = Some(error);
                        }
                    }
                }
            }
        }
        if waiting {
            return Poll::Pending;
        }
        Poll::Ready(match this.failed.take() {
            Some(error) => Err(error),
            None => Ok(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;
    use futures::FutureExt;

    /// A report the test completes by hand.
    type Report = futures::future::Map<
        oneshot::Receiver<Result<(), &'static str>>,
        fn(Result<Result<(), &'static str>, oneshot::Canceled>) -> Result<(), &'static str>,
    >;

    fn report() -> (oneshot::Sender<Result<(), &'static str>>, Report) {
        let (tx, rx) = oneshot::channel();
        let flatten: fn(_) -> _ =
            |r: Result<Result<(), &'static str>, oneshot::Canceled>| r.unwrap_or(Err("canceled"));
        (tx, rx.map(flatten))
    }

    fn try_release(gate: &mut Gate<u32, Report>) -> Option<(u32, Result<(), &'static str>)> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match gate.poll_release(&mut cx) {
            Poll::Ready(Some(released)) => Some((released.ticket, released.outcome)),
            _ => None,
        }
    }

    #[test]
    fn nothing_is_released_before_its_report() {
        let mut gate = Gate::default();
        let (tx, rx) = report();
        gate.push(1, Instant::now(), rx);
        assert_eq!(try_release(&mut gate), None);
        tx.send(Ok(())).unwrap();
        assert_eq!(try_release(&mut gate), Some((1, Ok(()))));
        assert!(gate.is_empty());
    }

    #[test]
    fn a_later_report_waits_for_the_earlier_entries() {
        let mut gate = Gate::default();
        let reports: Vec<_> = (0..3)
            .map(|i| {
                let (tx, rx) = report();
                gate.push(i, Instant::now(), rx);
                tx
            })
            .collect();
        let mut reports = reports.into_iter();
        let (first, second, third) = (
            reports.next().unwrap(),
            reports.next().unwrap(),
            reports.next().unwrap(),
        );
        third.send(Ok(())).unwrap();
        second.send(Err("kafka said no")).unwrap();
        assert_eq!(try_release(&mut gate), None, "the first is still out");
        assert_eq!(gate.len(), 3);
        first.send(Ok(())).unwrap();
        assert_eq!(try_release(&mut gate), Some((0, Ok(()))));
        assert_eq!(try_release(&mut gate), Some((1, Err("kafka said no"))));
        assert_eq!(try_release(&mut gate), Some((2, Ok(()))));
        assert_eq!(try_release(&mut gate), None);
    }

    #[test]
    fn a_lost_report_is_never_a_positive_one() {
        let mut gate = Gate::default();
        let (tx, rx) = report();
        gate.push(7, Instant::now(), rx);
        drop(tx);
        assert_eq!(try_release(&mut gate), Some((7, Err("canceled"))));
    }

    #[tokio::test]
    async fn no_routes_means_released_at_once() {
        let mut gate: Gate<u32, AllDelivered> = Gate::default();
        gate.push(1, Instant::now(), AllDelivered::new(Ok(Vec::new())));
        gate.push(
            2,
            Instant::now(),
            AllDelivered::new(Err(DeliveryError::Canceled)),
        );
        let first = gate.next().await.unwrap();
        assert_eq!(first.ticket, 1);
        assert!(first.outcome.is_ok());
        let second = gate.next().await.unwrap();
        assert_eq!(second.outcome, Err(DeliveryError::Canceled));
    }

    #[tokio::test]
    async fn a_dead_letter_never_hides_another_failure() {
        use tributary_bridge::DeliveryFailure;
        let ready = |outcome: Result<(), DeliveryError>| -> super::Report {
            super::Report::Boxed(Box::pin(std::future::ready(outcome)))
        };
        let dead = || Err(DeliveryError::DeadLettered(DeliveryFailure::InvalidPayload));
        // The dead letter is in first; another route then fails for now.
        let outcome =
            AllDelivered::new(Ok(vec![ready(dead()), ready(Err(DeliveryError::Canceled))])).await;
        assert_eq!(outcome, Err(DeliveryError::Canceled));
        let outcome = AllDelivered::new(Ok(vec![ready(Ok(())), ready(dead())])).await;
        assert_eq!(outcome, dead());
    }
}
