//! The units in flight, each on its own task, handed back in input order or as they finish.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use tokio::task::{JoinError, JoinHandle};

use super::{Done, Order};

/// A unit's token and what became of it.
pub(super) type Finished<T> = (T, Done);

/// The units in flight, handed back in input order or as they finish. Dropping it aborts them.
pub(super) struct InFlight<T>(Tasks<T>);

enum Tasks<T> {
    Input(FuturesOrdered<Task<Finished<T>>>),
    Completion(FuturesUnordered<Task<Finished<T>>>),
}

/// A task aborted when dropped (a unit still running at the shutdown deadline, or when the run
/// stops on an error).
struct Task<T>(JoinHandle<T>);

impl<T> Future for Task<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> InFlight<T> {
    pub fn new(order: Order) -> Self {
        match order {
            Order::Input => InFlight(Tasks::Input(FuturesOrdered::new())),
            Order::Completion => InFlight(Tasks::Completion(FuturesUnordered::new())),
        }
    }

    pub fn push(&mut self, task: JoinHandle<Finished<T>>) {
        match &mut self.0 {
            Tasks::Input(f) => f.push_back(Task(task)),
            Tasks::Completion(f) => f.push(Task(task)),
        }
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Tasks::Input(f) => f.len(),
            Tasks::Completion(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn next(&mut self) -> Option<Finished<T>> {
        let done = match &mut self.0 {
            Tasks::Input(f) => f.next().await,
            Tasks::Completion(f) => f.next().await,
        };
        done.map(joined)
    }

    pub fn abort_all(&mut self) {
        match &mut self.0 {
            Tasks::Input(f) => *f = FuturesOrdered::new(),
            Tasks::Completion(f) => *f = FuturesUnordered::new(),
        }
    }
}

/// The result of a task; a panic in it is a bug, raised here.
pub(super) fn joined<T>(r: Result<T, JoinError>) -> T {
    r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
