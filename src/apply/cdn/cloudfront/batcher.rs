//! The batcher task of one CloudFront target: the only owner of its pending paths.
//!
//! Invariants:
//! - a submitted path is answered exactly once per submission: accepted (in an accepted
//!   `CreateInvalidation`, as itself or under a wildcard), rejected (invalid), or the whole
//!   submission fails with [`CdnError::Unavailable`] after `retry_for`;
//! - a path submitted while a request holding it is on its way joins the *next* request (the
//!   request in flight may have been made before the change the path stands for);
//! - a request refused outright (throttled, too many in progress, access) is re-planned with the
//!   paths that arrived since, under a new reference; a request whose outcome is unknown is sent
//!   again unchanged, under the same reference;
//! - memory: the pending set is cut into requests as soon as it reaches `max_paths`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::stream::{FuturesUnordered, StreamExt};
use indexmap::IndexMap;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::batch::{self, Entry};
use super::{Attempt, Command, Counters, Outcomes, PRICE_PER_PATH_USD, Sender, Settings};
use crate::apply::cdn::CdnError;
use crate::telemetry;

/// One path of one submission: (submission id, index of the path in it).
type Waiter = (u64, u32);
type Waiters = Vec<Waiter>;

struct Submission {
    results: Vec<Option<Result<(), String>>>,
    remaining: usize,
    reply: tokio::sync::oneshot::Sender<Outcomes>,
}

/// One `CreateInvalidation` request, kept identical across the retries of an unknown outcome.
struct Request {
    reference: String,
    entries: Vec<Entry<Waiters>>,
    /// When its oldest path was first sent: `retry_for` counts from here.
    since: Instant,
    /// Failed attempts so far (drives the backoff).
    attempts: usize,
}

impl Request {
    fn paths(&self) -> usize {
        self.entries.iter().map(|e| e.covers.len()).sum()
    }

    /// Back to requested paths (for a re-plan).
    fn into_paths(self, into: &mut IndexMap<String, Waiters>) {
        for e in self.entries {
            for (path, w) in e.covers {
                into.entry(path).or_default().extend(w);
            }
        }
    }
}

struct Waiting {
    at: Instant,
    /// Refused outright: newer paths may merge into it.
    mergeable: bool,
    request: Request,
}

type InFlight = Pin<Box<dyn Future<Output = (Request, Attempt)> + Send>>;

struct Batcher {
    s: Settings,
    sender: Sender,
    counters: Arc<Counters>,
    nonce: u64,
    seq: u64,
    next_submission: u64,
    submissions: HashMap<u64, Submission>,
    pending: IndexMap<String, Waiters>,
    opened: Option<Instant>,
    waiting: Vec<Waiting>,
    sending: FuturesUnordered<InFlight>,
    /// Requested paths held by requests (sending or waiting).
    in_requests: usize,
}

pub(super) async fn run(
    settings: Settings,
    sender: Sender,
    counters: Arc<Counters>,
    mut rx: mpsc::Receiver<Command>,
) {
    let mut b = Batcher {
        s: settings,
        sender,
        counters,
        nonce: rand::random(),
        seq: 0,
        next_submission: 0,
        submissions: HashMap::new(),
        pending: IndexMap::new(),
        opened: None,
        waiting: Vec::new(),
        sending: FuturesUnordered::new(),
        in_requests: 0,
    };
    loop {
        let window_end = b.opened.map(|t| t + b.s.window);
        let retry_at = b.waiting.iter().map(|w| w.at).min();
        let wake = match (window_end, retry_at) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        tokio::select! {
            biased;
            () = sleep_until(wake), if wake.is_some() => b.on_timer(Instant::now()),
            Some((request, attempt)) = b.sending.next(), if !b.sending.is_empty() => {
                b.on_attempt(request, attempt, Instant::now());
            }
            cmd = rx.recv() => match cmd {
                Some(Command::Submit { paths, reply }) => b.submit(paths, reply, Instant::now()),
                Some(Command::Drain) => {
                    b.s.window = Duration::ZERO;
                    b.flush_pending(Instant::now());
                }
                // The target was dropped: nobody waits for an answer any more.
                None => break,
            },
        }
        let pending = b.pending.len() + b.in_requests;
        b.counters.pending.store(pending as u64, Ordering::Relaxed);
        telemetry::cdn_pending(&b.s.name, pending as u64);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Batcher {
    fn submit(
        &mut self,
        paths: Vec<String>,
        reply: tokio::sync::oneshot::Sender<Outcomes>,
        now: Instant,
    ) {
        let id = self.next_submission;
        self.next_submission += 1;
        let mut results = vec![None; paths.len()];
        let mut remaining = 0;
        let mut requested = 0u64;
        for (i, path) in paths.into_iter().enumerate() {
            match batch::validate(&path) {
                Err(e) => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    results[i] = Some(Err(e));
                }
                Ok(()) => {
                    if self.pending.is_empty() {
                        self.opened = Some(now);
                    }
                    self.pending.entry(path).or_default().push((id, i as u32));
                    remaining += 1;
                    requested += 1;
                }
            }
        }
        self.counters
            .paths_requested
            .fetch_add(requested, Ordering::Relaxed);
        let submission = Submission {
            results,
            remaining,
            reply,
        };
        if remaining == 0 {
            answer(submission);
        } else {
            self.submissions.insert(id, submission);
        }
        if self.pending.len() >= self.s.limits.max_paths {
            self.flush_pending(now);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if self.opened.is_some_and(|t| now >= t + self.s.window) {
            self.flush_pending(now);
        }
        let (due, later): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.at <= now);
        self.waiting = later;
        for w in due {
            if w.mergeable && !self.pending.is_empty() {
                let paths = self.take_pending();
                for r in self.merge(w.request, paths) {
                    self.send(r);
                }
            } else {
                self.send(w.request);
            }
        }
    }

    fn take_pending(&mut self) -> IndexMap<String, Waiters> {
        self.opened = None;
        std::mem::take(&mut self.pending)
    }

    /// Cuts the pending paths into requests: merged into a refused request that waits for its
    /// retry (it created nothing, so it can grow), or sent now.
    fn flush_pending(&mut self, now: Instant) {
        if self.pending.is_empty() {
            self.opened = None;
            return;
        }
        let paths = self.take_pending();
        if let Some(i) = self.waiting.iter().position(|w| w.mergeable) {
            let w = self.waiting.swap_remove(i);
            for request in self.merge(w.request, paths) {
                self.waiting.push(Waiting {
                    at: w.at,
                    mergeable: true,
                    request,
                });
            }
            return;
        }
        for request in self.make_requests(paths, now, 0) {
            self.send(request);
        }
    }

    /// A refused request and newer paths, re-planned together (new references).
    fn merge(&mut self, request: Request, newer: IndexMap<String, Waiters>) -> Vec<Request> {
        let since = request.since;
        let attempts = request.attempts;
        self.in_requests -= request.paths();
        let mut paths = IndexMap::new();
        request.into_paths(&mut paths);
        for (p, w) in newer {
            paths.entry(p).or_default().extend(w);
        }
        self.make_requests(paths, since, attempts)
    }

    fn make_requests(
        &mut self,
        paths: IndexMap<String, Waiters>,
        since: Instant,
        attempts: usize,
    ) -> Vec<Request> {
        let planned = batch::plan(paths, &self.s.limits);
        for (wildcard, n) in &planned.collapses {
            tracing::debug!(target_name = %self.s.name, %wildcard, paths = n, "collapsed siblings into a wildcard");
            telemetry::cdn_collapse(&self.s.name, *n as u64);
            self.counters.collapses.fetch_add(1, Ordering::Relaxed);
            self.counters
                .paths_collapsed
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        planned
            .requests
            .into_iter()
            .map(|entries| self.request(entries, since, attempts))
            .collect()
    }

    fn request(
        &mut self,
        entries: Vec<Entry<Waiters>>,
        since: Instant,
        attempts: usize,
    ) -> Request {
        self.seq += 1;
        let reference = batch::caller_reference(
            self.nonce,
            self.seq,
            entries.iter().map(|e| e.path.as_str()),
        );
        let r = Request {
            reference,
            entries,
            since,
            attempts,
        };
        self.in_requests += r.paths();
        r
    }

    fn send(&mut self, request: Request) {
        let sender = self.sender.clone();
        let distribution = self.s.distribution_id.clone();
        self.sending.push(Box::pin(async move {
            let paths = request.entries.iter().map(|e| e.path.clone()).collect();
            let attempt = sender
                .create_invalidation(distribution.as_str(), &request.reference, paths)
                .await;
            (request, attempt)
        }));
    }

    fn on_attempt(&mut self, mut request: Request, attempt: Attempt, now: Instant) {
        let name = self.s.name.clone();
        match attempt {
            Attempt::Accepted { id } => {
                let sent = request.entries.len() as u64;
                telemetry::cdn_request(&name, "accepted");
                telemetry::cdn_paths_sent(&name, sent);
                telemetry::cdn_cost(&name, sent as f64 * PRICE_PER_PATH_USD);
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.counters.paths_sent.fetch_add(sent, Ordering::Relaxed);
                tracing::debug!(target_name = %name, invalidation = %id, reference = %request.reference,
                    paths = sent, requested = request.paths(), "invalidation created");
                self.in_requests -= request.paths();
                for e in request.entries {
                    for (_, waiters) in e.covers {
                        self.resolve(&waiters, || Ok(()));
                    }
                }
            }
            Attempt::Invalid { message } => {
                telemetry::cdn_request(&name, "invalid");
                self.in_requests -= request.paths();
                if request.entries.len() == 1 {
                    let e = request.entries.pop().expect("one entry");
                    tracing::warn!(target_name = %name, path = %e.path, error = %message, "CloudFront refused a path");
                    for (_, waiters) in e.covers {
                        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                        self.resolve(&waiters, || Err(message.clone()));
                    }
                } else {
                    // Bisect: the halves that hold no bad path go through.
                    let second = request.entries.split_off(request.entries.len() / 2);
                    for half in [std::mem::take(&mut request.entries), second] {
                        let r = self.request(half, request.since, request.attempts);
                        self.send(r);
                    }
                }
            }
            Attempt::Refused { throttle, message } => {
                match &throttle {
                    Some(code) => {
                        telemetry::cdn_request(&name, "throttled");
                        telemetry::cdn_throttle(&name, code);
                        self.counters.throttles.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        telemetry::cdn_request(&name, "refused");
                        self.counters
                            .failed_attempts
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.retry_later(request, true, message, now);
            }
            Attempt::Unknown { message } => {
                telemetry::cdn_request(&name, "failed");
                self.counters
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                self.retry_later(request, false, message, now);
            }
        }
    }

    fn retry_later(
        &mut self,
        mut request: Request,
        mergeable: bool,
        message: String,
        now: Instant,
    ) {
        if now.duration_since(request.since) >= self.s.retry_for {
            tracing::warn!(target_name = %self.s.name, attempts = request.attempts + 1, error = %message,
                "CloudFront unavailable: giving up on this batch; its units will be retried");
            self.in_requests -= request.paths();
            let error = CdnError::Unavailable {
                target: self.s.name.clone(),
                message,
            };
            for e in request.entries {
                for (_, waiters) in e.covers {
                    for (sub, _) in waiters {
                        if let Some(s) = self.submissions.remove(&sub) {
                            let _ = s.reply.send(Err(error.clone()));
                        }
                    }
                }
            }
            return;
        }
        let delay = backoff(request.attempts);
        request.attempts += 1;
        tracing::warn!(target_name = %self.s.name, reference = %request.reference, attempts = request.attempts,
            retry_in = ?delay, error = %message, "CreateInvalidation not accepted; retrying");
        self.waiting.push(Waiting {
            at: now + delay,
            mergeable,
            request,
        });
    }

    fn resolve(&mut self, waiters: &[Waiter], result: impl Fn() -> Result<(), String>) {
        for &(sub, i) in waiters {
            let Some(s) = self.submissions.get_mut(&sub) else {
                // Already answered (failed as unavailable): nothing to do.
                continue;
            };
            let slot = &mut s.results[i as usize];
            if slot.is_none() {
                *slot = Some(result());
                s.remaining -= 1;
            }
            if s.remaining == 0 {
                let s = self.submissions.remove(&sub).expect("present");
                answer(s);
            }
        }
    }
}

fn answer(s: Submission) {
    let results = s
        .results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not answered".into())))
        .collect();
    let _ = s.reply.send(Ok(results));
}

/// The wait before retry number `attempts + 1`: exponential from 200 ms to 20 s, with jitter.
fn backoff(attempts: usize) -> Duration {
    crate::backoff::jittered(Duration::from_millis(200), Duration::from_secs(20))
        .build()
        .nth(attempts)
        .unwrap_or(Duration::from_secs(20))
}
