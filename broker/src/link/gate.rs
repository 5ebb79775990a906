//! The ordered in-flight window of one connection.
//!
//! Each QoS 1/2 publish waits here for Kafka's delivery reports (one per matching
//! route) and is released strictly in arrival order, so acknowledgements go out
//! in the order the publishes came in (MQTT 4.6) and messages reach the router in
//! that order. It never releases an entry as delivered before every one of its
//! delivery reports is positive.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::join_all;
use futures::stream::{FuturesOrdered, StreamExt};
use tributary_bridge::{DeliveryError, PendingDelivery};

use crate::events;

type Reports = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send>>;

/// A released entry: what was waiting, and whether Kafka has it.
pub struct Released<T> {
    pub ticket: T,
    pub outcome: Result<(), DeliveryError>,
    /// When the publish was read from the device.
    pub received: Instant,
}

/// The window: entries in arrival order, each with its pending delivery reports.
pub struct Gate<T> {
    reports: FuturesOrdered<Reports>,
    tickets: VecDeque<(T, Instant)>,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            reports: FuturesOrdered::new(),
            tickets: VecDeque::new(),
        }
    }
}

impl<T> Gate<T> {
    /// Entries waiting (the in-flight count the window limits).
    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// Adds an entry behind all others. With no deliveries (an unrouted publish,
    /// a re-sent QoS 2 publish) it is released as soon as those ahead are.
    /// `deliveries` is an error when a record could not even be queued.
    pub fn push(
        &mut self,
        ticket: T,
        received: Instant,
        deliveries: Result<Vec<PendingDelivery>, DeliveryError>,
    ) {
        let reports: Reports = Box::pin(async move {
            join_all(deliveries?)
                .await
                .into_iter()
                .find_map(Result::err)
                .map_or(Ok(()), Err)
        });
        self.reports.push_back(reports);
        self.tickets.push_back((ticket, received));
        events::InFlightChanged { delta: 1 }.emit();
    }

    /// The next entry in arrival order, once all its reports are in.
    pub fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<Option<Released<T>>> {
        match self.reports.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(outcome)) => {
                let (ticket, received) = self
                    .tickets
                    .pop_front()
                    .expect("one ticket per pending entry");
                events::InFlightChanged { delta: -1 }.emit();
                Poll::Ready(Some(Released {
                    ticket,
                    outcome,
                    received,
                }))
            }
        }
    }

    /// Waits for the next release; pending forever when empty (use as a
    /// `select!` branch guarded by `!is_empty()`).
    pub async fn next(&mut self) -> Option<Released<T>> {
        std::future::poll_fn(|cx| self.poll_release(cx)).await
    }
}

impl<T> Drop for Gate<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_without_deliveries_release_in_order() {
        let mut gate = Gate::default();
        for i in 0..3 {
            gate.push(i, Instant::now(), Ok(Vec::new()));
        }
        assert_eq!(gate.len(), 3);
        for i in 0..3 {
            let released = gate.next().await.unwrap();
            assert_eq!(released.ticket, i);
            assert!(released.outcome.is_ok());
        }
        assert!(gate.is_empty());
    }
}
