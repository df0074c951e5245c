//! The one driver of units of work, for `replay` and the Kafka worker: a source hands over units
//! (an [`Adapter`]), the driver runs each on its own task through the engine and the dead-letter
//! sink, and hands it back to be acknowledged.
//!
//! Invariants:
//! - at most `max_in_flight` units run at once; no unit is taken while more than
//!   `max_pending_redeletes` keys and tags wait for their `redelete_after`; the payload bytes the
//!   units in flight hold ([`Records::bytes`]) are counted in the [`Room`], for a source that
//!   bounds them (the worker's `max_in_flight_bytes`);
//! - a unit is handed back (acknowledged) only after it was applied and its dead letters were
//!   written; an outage is never a dead letter: per [`Outages`], the unit is retried with backoff
//!   until it goes through (the worker) or handed back as not applied (replay);
//! - [`Order::Input`]: units are handed back, and their dead letters written, in input order;
//!   [`Order::Completion`]: as they finish (the worker's watermarks keep offsets in order);
//! - due `redelete_after`s run on their own task, one batch at a time, beside the units;
//! - the end: when the source is exhausted, the units in flight finish and every pending redelete
//!   runs at its time; at `shutdown`, the units the source still holds are started, CDN batch
//!   windows are sent at once, and everything finishes (redeletes early) within `shutdown_timeout`.

mod in_flight;
mod unit;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::apply::redis::ApplyReport;
use crate::dead_letter::DeadLetterSink;
use crate::engine::{Engine, EngineError};
use crate::event::Expanded;
use crate::health::Health;
use crate::plan::{Redelete, Redeletes};
use in_flight::{InFlight, joined};
pub use unit::UnitReport;
use unit::{Turn, UnitRunner};

/// A source and its acknowledger.
pub trait Adapter {
    type Unit: Records;
    /// What acknowledging a unit needs (the worker: its offsets).
    type Token: Send + 'static;
    /// Why the run must stop (replay: a dead-letter file that cannot be written).
    type Error;

    /// The next unit, only when `room` says the driver can take one; otherwise the adapter keeps
    /// its source alive (a consumer keeps polling) and returns nothing. `None`: the source is
    /// exhausted. Must be cancel-safe: the driver drops it whenever something else happens.
    fn next(&mut self, room: Room) -> impl Future<Output = Option<(Self::Unit, Self::Token)>>;

    /// The units the source still holds at shutdown (started at once, whatever the room).
    fn drain(&mut self) -> Vec<(Self::Unit, Self::Token)> {
        Vec::new()
    }

    /// A unit is over: applied with its dead letters written, or given up.
    fn ack(&mut self, token: Self::Token, done: Done) -> Result<(), Self::Error>;

    /// A batch of `keys` redeletes ran; says what to do when it failed.
    fn redeleted(&mut self, keys: usize, result: Result<ApplyReport, EngineError>) -> Redeleted;

    /// The adapter gave up on the run (replay after an outage): no more redeletes are started.
    fn gave_up(&self) -> bool {
        false
    }
}

/// The records of a unit.
pub trait Records: Send + 'static {
    /// The records for the engine; `attempts` earlier tries failed for an outage. Called again
    /// for each retry; a source whose driver never retries ([`Outages::GiveUp`]) may hand its
    /// records over once.
    fn records(&mut self, attempts: u32) -> Vec<Expanded>;

    /// The payload bytes the unit holds while it is in flight, for [`Room::in_flight_bytes`]. A
    /// source that bounds no bytes may leave it at 0.
    fn bytes(&self) -> usize {
        0
    }
}

/// Whether the driver can take a unit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Fewer than `max_in_flight` units run.
    pub units: bool,
    /// At most `max_pending_redeletes` keys and tags wait for their time.
    pub redeletes: bool,
    /// The payload bytes held by the units in flight ([`Records::bytes`]). It does not change
    /// while [`Adapter::next`] runs: a unit that finishes ends that call first.
    pub in_flight_bytes: usize,
}

impl Room {
    pub fn any(self) -> bool {
        self.units && self.redeletes
    }
}

/// What to do after a batch of redeletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeleted {
    Done,
    /// Try the batch again in a second.
    Retry,
    /// Run no more redeletes.
    Stop,
}

/// In which order units are handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Input,
    Completion,
}

/// What an outage (Redis, a CDN or the dead-letter sink unavailable) does to a unit.
#[derive(Clone)]
pub enum Outages {
    /// Hand it back as not applied.
    GiveUp,
    /// Retry it with exponential backoff until it goes through; `/readyz` says why meanwhile.
    Retry(Arc<Health>),
}

/// How the driver runs.
#[derive(Clone)]
pub struct Settings {
    pub max_in_flight: usize,
    pub max_pending_redeletes: usize,
    pub order: Order,
    pub outages: Outages,
    /// Plan and read only: nothing written, no dead letter, no redelete.
    pub dry_run: bool,
    /// How long the end after `shutdown` may take.
    pub shutdown_timeout: Duration,
}

/// A unit that is over.
#[derive(Debug)]
pub struct Done {
    /// The records it held.
    pub events: u64,
    pub result: Result<UnitReport, Failure>,
}

/// Why a unit was not applied (only with [`Outages::GiveUp`]).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Unavailable(#[from] EngineError),
    #[error("dead letters not written: {0}")]
    DeadLetters(String),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// Every unit taken in was handed back and every redelete ran.
    pub clean: bool,
}

/// The driver: the engine, the dead-letter sink, the settings.
pub struct Driver<S> {
    pub engine: Arc<Engine>,
    pub sink: Arc<S>,
    pub settings: Settings,
}

/// The driver's moving parts during a run.
struct Run<S, T> {
    unit: Arc<UnitRunner<S>>,
    /// Each unit's token and the bytes it holds.
    in_flight: InFlight<(T, usize)>,
    /// The sum of the bytes the units in flight hold.
    in_flight_bytes: usize,
    redeletes: Redeletes,
    redeleting: Option<JoinHandle<(Redelete, Result<ApplyReport, EngineError>)>>,
    redeletes_stopped: bool,
    /// The turn of the last unit started ([`Order::Input`]): the next one writes after it.
    last_turn: Option<oneshot::Receiver<()>>,
}

impl<S: DeadLetterSink + 'static> Driver<S> {
    /// Runs units from `adapter` until its source is exhausted or `shutdown` resolves.
    pub async fn run<A: Adapter>(
        &self,
        adapter: &mut A,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Ending, A::Error>
where {
        let s = &self.settings;
        let mut run = Run {
            unit: Arc::new(UnitRunner {
                engine: self.engine.clone(),
                sink: self.sink.clone(),
                outages: s.outages.clone(),
                dry_run: s.dry_run,
            }),
            in_flight: InFlight::new(s.order),
            in_flight_bytes: 0,
            redeletes: Redeletes::default(),
            redeleting: None,
            redeletes_stopped: s.dry_run,
            last_turn: None,
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut exhausted = false;
        while !exhausted || !run.in_flight.is_empty() {
            run.redeletes_stopped |= adapter.gave_up();
            run.start_due_redeletes(&self.engine);
            let room = Room {
                units: run.in_flight.len() < s.max_in_flight,
                redeletes: run.redeletes.pending <= s.max_pending_redeletes,
                in_flight_bytes: run.in_flight_bytes,
            };
            let next_redelete = run
                .redeletes
                .next_due()
                .filter(|_| run.redeleting.is_none());
            tokio::select! {
                biased;
                () = &mut shutdown => return run.shut_down(adapter, &self.engine, s).await,
                Some((token, done)) = run.in_flight.next() => run.finish(adapter, token, done)?,
                Some((due, result)) = finished(&mut run.redeleting) => {
                    run.redeleting = None;
                    run.redeleted(adapter, due, result);
                }
                () = sleep_until(next_redelete), if next_redelete.is_some() => {}
                next = adapter.next(room), if !exhausted => match next {
                    Some((unit, token)) => run.start(unit, token, s.order),
                    None => exhausted = true,
                },
            }
        }
        let clean = run.redeletes_at_their_time(adapter, &self.engine).await;
        Ok(Ending { clean })
    }
}

impl<S: DeadLetterSink + 'static, T: Send + 'static> Run<S, T> {
    fn start<U: Records>(&mut self, unit: U, token: T, order: Order) {
        let (mine, next) = oneshot::channel();
        let turn = Turn {
            previous: match order {
                Order::Input => self.last_turn.replace(next),
                Order::Completion => None,
            },
            _mine: mine,
        };
        let runner = self.unit.clone();
        let bytes = unit.bytes();
        self.in_flight_bytes += bytes;
        self.in_flight.push(tokio::spawn(async move {
            let done = runner.run(unit, turn).await;
            ((token, bytes), done)
        }));
    }

    fn finish<A: Adapter<Token = T>>(
        &mut self,
        adapter: &mut A,
        (token, bytes): (T, usize),
        done: Done,
    ) -> Result<(), A::Error> {
        self.in_flight_bytes -= bytes;
        if let Ok(unit) = &done.result
            && !self.redeletes_stopped
        {
            self.redeletes.schedule(Instant::now(), &unit.redeletes);
        }
        adapter.ack(token, done)
    }

    fn start_due_redeletes(&mut self, engine: &Arc<Engine>) {
        if self.redeleting.is_some() || self.redeletes_stopped {
            return;
        }
        self.redeleting = self.redeletes.take_due(Instant::now()).map(|due| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let result = engine.redelete(&due).await;
                (due, result)
            })
        });
    }

    fn redeleted<A: Adapter<Token = T>>(
        &mut self,
        adapter: &mut A,
        due: Redelete,
        result: Result<ApplyReport, EngineError>,
    ) {
        if let Err(e) = &result {
            tracing::warn!(error = %e, keys = due.len(), "redelete failed");
        }
        match adapter.redeleted(due.len(), result) {
            Redeleted::Done => {}
            Redeleted::Retry => self
                .redeletes
                .retry_at(Instant::now() + Duration::from_secs(1), due),
            Redeleted::Stop => self.redeletes_stopped = true,
        }
    }

    /// The source is exhausted and every unit handed back: the pending redeletes, at their time.
    async fn redeletes_at_their_time<A: Adapter<Token = T>>(
        &mut self,
        adapter: &mut A,
        engine: &Arc<Engine>,
    ) -> bool {
        loop {
            if let Some(task) = self.redeleting.take() {
                let (due, result) = joined(task.await);
                self.redeleted(adapter, due, result);
            }
            self.redeletes_stopped |= adapter.gave_up();
            if self.redeletes_stopped {
                return self.redeletes.pending == 0;
            }
            let Some(at) = self.redeletes.next_due() else {
                return true;
            };
            tokio::time::sleep_until(at.into()).await;
            self.start_due_redeletes(engine);
        }
    }

    /// `shutdown`: start what the source holds, send CDN windows at once, finish everything
    /// (redeletes early) within the timeout.
    async fn shut_down<A: Adapter<Token = T>>(
        mut self,
        adapter: &mut A,
        engine: &Arc<Engine>,
        s: &Settings,
    ) -> Result<Ending, A::Error> {
        let deadline = tokio::time::Instant::now() + s.shutdown_timeout;
        // No CDN batch window may hold the shutdown back: what waits is sent now, and so is every
        // path the last units submit.
        engine.cdn.drain().await;
        let held = adapter.drain();
        tracing::info!(
            in_flight = self.in_flight.len(),
            waiting = held.len(),
            redeletes = self.redeletes.pending,
            "shutting down"
        );
        for (unit, token) in held {
            self.start(unit, token, s.order);
        }
        let mut clean = true;
        loop {
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some((token, done))) => self.finish(adapter, token, done)?,
                Ok(None) => break,
                Err(_) => {
                    tracing::error!(
                        units = self.in_flight.len(),
                        cdn_paths_pending = engine.cdn.pending(),
                        "shutdown deadline passed with units not applied; they are not acknowledged"
                    );
                    clean = false;
                    break;
                }
            }
        }
        self.in_flight.abort_all();
        if let Some(task) = self.redeleting.take() {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(done) => {
                    let (due, result) = joined(done);
                    self.redeleted(adapter, due, result);
                }
                Err(_) => clean = false,
            }
        }
        // Early rather than never: the process is going away.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        if clean && let Some(all) = self.redeletes.take_due(far) {
            match tokio::time::timeout_at(deadline, engine.redelete(&all)).await {
                Ok(Ok(_)) => tracing::info!(keys = all.len(), "pending redeletes run"),
                _ => {
                    tracing::warn!(
                        keys = all.len(),
                        "pending redeletes not run before the deadline"
                    );
                    clean = false;
                }
            }
        }
        Ok(Ending { clean })
    }
}

/// The result of `task` when there is one; pending forever otherwise, so that it can stand in a
/// `select!`.
async fn finished<T>(task: &mut Option<JoinHandle<T>>) -> Option<T> {
    match task {
        Some(t) => Some(joined(t.await)),
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; pending forever without one, so that it can stand in a `select!`.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
